"""Release reclaims every process an environment started, however it detached: the local
provider runs each environment in a PID namespace of its own, so ending the namespace's
first process ends them all (processes that dropped the THUNDER_* variables with ``env -i``
and left their session with ``setsid`` included)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.tools.envtest import fast_config, running_manager
from thunder_middleware.tools import LocalProvider, parse_spec


def _with_cmdline(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as handle:
                zombie = handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            continue
        if marker.encode() in argv and not zombie:
            found.append(int(entry))
    return found


async def _gone(marker: str, timeout_s: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if not _with_cmdline(marker):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_detached_processes_die_with_their_environment(tmp_path: Path) -> None:
    async with running_manager(LocalProvider(tmp_path / "envs"), fast_config()) as manager:
        await manager.declare("t/escape", parse_spec({}))
        started = await manager.exec(
            "t/escape", "setsid env -i sleep 315 </dev/null >/dev/null 2>&1 & "
            "(setsid env -i sh -c 'sleep 316' </dev/null >/dev/null 2>&1 &) ; echo started",
            timeout_s=20)
        assert started.exit_code == 0 and started.stdout == "started\n", started
        # a later exec still sees (and can use) what the first one left running
        seen = await manager.exec("t/escape", "ps -o args= 2>/dev/null || ls /proc",
                                  timeout_s=20)
        assert seen.exit_code == 0
        for marker in ("315", "316"):
            assert _with_cmdline(marker), f"sleep {marker} did not start"
        await manager.reclaim("t/escape")
        assert await _gone("315") and await _gone("316"), \
            (_with_cmdline("315"), _with_cmdline("316"))


async def test_a_timed_out_exec_takes_its_detached_children(tmp_path: Path) -> None:
    """A timeout kills the exec's process group; what it detached lives on in the
    environment until release, and release ends it."""
    async with running_manager(LocalProvider(tmp_path / "envs"), fast_config()) as manager:
        await manager.declare("t/slow", parse_spec({}))
        timed_out = await manager.exec(
            "t/slow", "setsid env -i sleep 317 </dev/null >/dev/null 2>&1 & sleep 30",
            timeout_s=1)
        assert timed_out.timed_out
        await manager.reclaim("t/slow")
        assert await _gone("317"), _with_cmdline("317")
