"""The one global waiting queue shared by all backends (DESIGN section 3).

Kept sorted by restore order, (class, c, arrival), so that selecting the next programs to
restore is a walk from the head, and alongside it a second index by the time a request
started waiting, so that the starvation check looks only at the oldest waiters. Both are
``SortedList``s: O(log n) insert/remove at 10,000 programs instead of re-sorting every tick.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

from sortedcontainers import SortedList

from thunder_middleware.policy.program import ProgramRecord, RestoreClass

_OrderKey = tuple[int, float, int, str]
_WaitKey = tuple[float, int, str]


class WaitingQueue:
    """Paused and not-yet-admitted programs, in restore order."""

    __slots__ = ("_order", "_order_keys", "_seq", "_wait", "_wait_keys")

    def __init__(self) -> None:
        self._order: SortedList = SortedList()
        self._order_keys: dict[str, _OrderKey] = {}
        self._wait: SortedList = SortedList()
        self._wait_keys: dict[str, _WaitKey] = {}
        self._seq = count()

    def __len__(self) -> int:
        return len(self._order_keys)

    def __contains__(self, program_id: object) -> bool:
        return program_id in self._order_keys

    def push(self, record: ProgramRecord) -> None:
        """Enqueue (or re-key) a program; its class and c decide its place."""
        self.remove(record.program_id)
        restore_class = record.restore_class
        # starving programs go oldest first; every other class smallest c first
        size = record.waiting_since or 0.0 if restore_class is RestoreClass.STARVING else record.c
        key = (int(restore_class), size, next(self._seq), record.program_id)
        self._order.add(key)
        self._order_keys[record.program_id] = key
        if record.waiting > 0 and record.waiting_since is not None and not record.starving:
            wkey = (record.waiting_since, key[2], record.program_id)
            self._wait.add(wkey)
            self._wait_keys[record.program_id] = wkey

    def reclassify(self, record: ProgramRecord) -> None:
        """Move a queued program after its class, c or waiting state changed.

        Keeps its arrival sequence only implicitly (a fresh one is drawn): ties in
        (class, c) are rare and a re-keyed program has just had an event, so going behind
        its equals is fair.
        """
        if record.program_id in self._order_keys:
            self.push(record)

    def remove(self, program_id: str) -> bool:
        key = self._order_keys.pop(program_id, None)
        if key is None:
            return False
        self._order.remove(key)
        wkey = self._wait_keys.pop(program_id, None)
        if wkey is not None:
            self._wait.remove(wkey)
        return True

    def in_order(self) -> Iterator[str]:
        """Program ids in restore order (reasoning, new, acting; smallest c first)."""
        for key in self._order:
            yield key[3]

    def head(self, limit: int) -> list[str]:
        return [key[3] for key in self._order.islice(0, max(limit, 0))]

    def waiting_since_before(self, deadline: float) -> list[str]:
        """Programs whose request has waited at the gate since before ``deadline``.

        Programs already flagged as starving are not in this index any more, so a backlog
        of starving programs costs nothing per event.
        """
        out: list[str] = []
        for since, _, program_id in self._wait:
            if since > deadline:
                break
            out.append(program_id)
        return out

    def oldest_wait(self) -> float | None:
        return self._wait[0][0] if self._wait else None
