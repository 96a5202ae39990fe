"""A pool of host ports handed to environments, without collisions.

A port is lent to one owner at a time, and only after a bind test on loopback shows no other
process (another sidecar, a test server) holds it; returned ports go to the back of the queue
so a just-freed port (maybe still in TIME_WAIT or cached by a client) is reused last.
The pool lends ports; the environment binds them later, so the bind test narrows but cannot
close the window in which an unrelated process grabs the same port.
"""

from __future__ import annotations

import random
import socket
import threading
from collections import deque


class PortsExhausted(RuntimeError):
    pass


def _port_is_free(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class PortPool:
    def __init__(self, start: int = 20000, end: int = 29999, host: str = "127.0.0.1") -> None:
        if not 1024 <= start <= end <= 65535:
            raise ValueError("port range must lie within 1024..65535 and start <= end")
        self.host = host
        self._free: deque[int] = deque(range(start, end + 1))
        # Start at a random point: two sidecars on one host (each with its own pool) then
        # hand out different ports long before the bind test has to settle a race.
        self._free.rotate(-random.randrange(len(self._free)))
        self._lent: dict[int, str] = {}
        self._lock = threading.Lock()

    def acquire(self, owner: str, count: int) -> list[int]:
        """Lend ``count`` ports to ``owner``; all or none."""
        taken: list[int] = []
        with self._lock:
            skipped: list[int] = []
            while len(taken) < count and self._free:
                port = self._free.popleft()
                if _port_is_free(port, self.host):
                    taken.append(port)
                else:
                    skipped.append(port)
            self._free.extend(skipped)
            if len(taken) < count:
                self._free.extendleft(reversed(taken))
                raise PortsExhausted(f"no {count} free ports left in the pool")
            for port in taken:
                self._lent[port] = owner
        return taken

    def release(self, ports: list[int]) -> int:
        """Return ports; unknown ones are ignored (release is idempotent). Returns the count."""
        returned = 0
        with self._lock:
            for port in ports:
                if self._lent.pop(port, None) is not None:
                    self._free.append(port)
                    returned += 1
        return returned

    def lent(self) -> dict[int, str]:
        with self._lock:
            return dict(self._lent)

    @property
    def in_use(self) -> int:
        with self._lock:
            return len(self._lent)
