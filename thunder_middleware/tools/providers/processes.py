"""Finding and killing local environment processes by the labels in their environment.

Every process the local provider starts carries ``THUNDER_*`` variables; its descendants
inherit them, even those that leave the process group with ``setsid``. Scanning
``/proc/*/environ`` therefore finds every process of an environment (or of a dead sidecar
instance) without trusting pid files that a crash may have left stale.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from thunder_middleware.tools import labels


def _stat_fields(pid: str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first, then the parent
    pid); None once the process is gone. Split after the last ")" because the name itself may
    hold spaces and parentheses."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _is_zombie(pid: str) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[0] in {"Z", "X"}


def managed_processes() -> dict[int, dict[str, str]]:
    """pid -> THUNDER_* labels of every live (non-zombie) managed process on this host."""
    found: dict[int, dict[str, str]] = {}
    marker = f"{labels.ENV_VAR_MANAGED}=true".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:  # hot loop: no pathlib
                raw = handle.read()
        except OSError:
            continue
        if marker not in raw:
            continue
        variables = dict(
            item.split(b"=", 1) for item in raw.split(b"\0") if item.startswith(b"THUNDER_")
        )
        if _is_zombie(entry):
            continue
        found[int(entry)] = {key.decode(): value.decode(errors="replace")
                             for key, value in variables.items()}
    return found


def processes_with(label: str, value: str) -> list[int]:
    return [pid for pid, found in managed_processes().items() if found.get(label) == value]


def kill_processes(pids: list[int]) -> int:
    """SIGKILL each pid (and its process group when it leads one); returns how many died."""

    def kill_group_or_process(pid: int) -> None:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)

    return _kill_each(pids, kill_group_or_process)


def _kill_each(pids: list[int], kill: Callable[[int], None]) -> int:
    """Apply ``kill`` to each pid; one that is gone or not ours is skipped, not an error (it may
    have exited since it was found). Returns how many were killed."""
    killed = 0
    for pid in pids:
        try:
            kill(pid)
            killed += 1
        except (ProcessLookupError, PermissionError):
            continue
    return killed


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children first found via /proc parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, frontier = [pid], [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found.extend(children)
        frontier.extend(children)
    return found


def kill_tree(pid: int) -> int:
    """SIGKILL a process and all its descendants (an exec'd shell and what it started)."""
    return _kill_each(descendants(pid), lambda member: os.kill(member, signal.SIGKILL))
