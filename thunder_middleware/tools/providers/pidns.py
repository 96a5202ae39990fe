"""A PID namespace per local environment: what release ends, however a process detached.

Invariant: every process an environment starts (its main command, each exec and anything
they spawn) lives in the environment's own PID namespace, whose first process (the
*holder*, a tiny reaper) the provider keeps. When the holder dies the kernel kills every
other process of the namespace, so release ends them all, including those that left their
session (``setsid``) and dropped the ``THUNDER_*`` variables (``env -i``), which a search by
those variables cannot find.

The namespace is made with util-linux ``unshare`` and entered with ``nsenter``. As root they
need nothing else; otherwise a user namespace comes with it (the user maps to itself). Where
neither works (no util-linux, namespaces forbidden), environments run without one and
release falls back to the search by variables (logged once at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_UNSHARE = shutil.which("unshare")
_NSENTER = shutil.which("nsenter")
#: the holder: PID 1 of the namespace, reaping the orphans the namespace hands it
REAPER = ("import os, time\n"
          "while True:\n"
          "    try:\n"
          "        os.waitpid(-1, 0)\n"
          "    except ChildProcessError:\n"
          "        time.sleep(0.5)\n")
_START_WAIT_S = 5.0


def _user_namespace() -> list[str]:
    return [] if os.geteuid() == 0 else ["--user", "--map-current-user"]


def holder_argv() -> list[str] | None:
    """The command that starts a namespace's holder, or None where none can be made."""
    if _UNSHARE is None or _NSENTER is None:
        return None
    return [_UNSHARE, *_user_namespace(), "--pid", "--fork", "--kill-child", "--",
            sys.executable, "-c", REAPER]


def enter_argv(ns_pid: int, argv: list[str]) -> list[str]:
    """``argv`` run inside the namespace whose first process is ``ns_pid`` (host pid)."""
    assert _NSENTER is not None
    entry = ["--user", "--preserve-credentials"] if os.geteuid() != 0 else []
    return [_NSENTER, "--target", str(ns_pid), *entry, "--pid", "--", *argv]


def namespaces_work() -> bool:
    """Whether a namespace can be made here (checked once, at provider start)."""
    argv = holder_argv()
    if argv is None:
        log.warning("util-linux unshare/nsenter not found: local environments run without "
                    "a PID namespace, and release finds processes by their variables only")
        return False
    probe = [*argv[: argv.index("--") + 1], "true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("PID namespaces unavailable (%r): local environments run without one", exc)
        return False
    if done.returncode != 0:
        log.warning("PID namespaces unavailable (%s): local environments run without one",
                    done.stderr.decode(errors="replace").strip())
        return False
    return True


async def namespace_pid(holder: asyncio.subprocess.Process) -> int:
    """The host pid of the namespace's first process (the child ``unshare`` forked)."""
    children = Path(f"/proc/{holder.pid}/task/{holder.pid}/children")
    deadline = asyncio.get_running_loop().time() + _START_WAIT_S
    while True:
        with contextlib.suppress(OSError):
            found = children.read_text().split()
            if found:
                return int(found[0])
        if holder.returncode is not None or asyncio.get_running_loop().time() > deadline:
            raise OSError(f"the PID namespace holder did not start (exit {holder.returncode})")
        await asyncio.sleep(0.01)


def members(ns_pid: int | None) -> list[int]:
    """The host pids of the namespace's processes other than its first one."""
    if ns_pid is None:
        return []
    try:
        namespace = os.readlink(f"/proc/{ns_pid}/ns/pid")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != ns_pid:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                    found.append(int(entry))
    return found


def end_namespace(ns_pid: int | None, holder: asyncio.subprocess.Process | None) -> None:
    """Kill the namespace's first process: the kernel then kills all the others."""
    for pid in (ns_pid, holder.pid if holder is not None else None):
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
