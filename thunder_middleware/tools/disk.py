"""Disk accounting: bytes an environment holds on the host, per program and in total."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def directory_usage(path: str | Path) -> int:
    """Allocated bytes under ``path`` (like ``du -s --apparent-size``, links not followed).

    Files vanishing during the walk are skipped: environments write while we count.
    """
    total = 0
    stack = [str(path)]
    seen: set[tuple[int, int]] = set()
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    key = (info.st_dev, info.st_ino)
                    if key not in seen:  # hard links count once
                        seen.add(key)
                        total += info.st_size
            except OSError:
                continue
    return total


class DiskLedger:
    """Last measured bytes per environment; totals per program and overall.

    Measurements are sampled (a walk is not free), so readers see the latest sample; a reclaim
    drops the entry at once, so the total falls the moment an environment is gone.
    """

    def __init__(self) -> None:
        self._bytes: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def record(self, env_id: str, owner: str, size: int) -> None:
        with self._lock:
            self._bytes[env_id] = (owner, size)

    def forget(self, env_id: str) -> int:
        with self._lock:
            _, size = self._bytes.pop(env_id, ("", 0))
        return size

    def of_env(self, env_id: str) -> int:
        with self._lock:
            return self._bytes.get(env_id, ("", 0))[1]

    def of_program(self, owner: str) -> int:
        with self._lock:
            return sum(size for who, size in self._bytes.values() if who == owner)

    def total(self) -> int:
        with self._lock:
            return sum(size for _, size in self._bytes.values())
