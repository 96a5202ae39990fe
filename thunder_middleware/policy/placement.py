"""Best-fit-decreasing placement of restored programs over all healthy backends.

The largest selected program goes to the backend with the most room, and so on down
(DESIGN section 3). A paused program's cache is gone anyway, so moving it costs nothing
extra: placing by room is how memory imbalance between replicas is removed.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(slots=True)
class Bin:
    """A backend as placement sees it: tokens of room left, and whether it holds nothing.

    An empty backend accepts a program larger than its room: otherwise a context bigger than
    every backend's watermark could never run at all.
    """

    name: str
    room: float
    empty: bool


def place_decreasing(items: list[tuple[str, float]], bins: list[Bin]) -> list[tuple[str, str]]:
    """Assign (program, need) items, largest first, each to the bin with the most room.

    Returns (program, backend) pairs in assignment order; items that fit nowhere are left
    out (they stay queued). Ties are broken by backend name so placement is deterministic.
    """
    if not items or not bins:
        return []
    heap = [(-b.room, b.name, b) for b in bins]
    heapq.heapify(heap)
    placed: list[tuple[str, str]] = []
    for program_id, need in sorted(items, key=lambda item: (-item[1], item[0])):
        _, _, best = heap[0]
        if need <= best.room or best.empty:
            best.room -= need
            best.empty = False
            heapq.heapreplace(heap, (-best.room, best.name, best))
            placed.append((program_id, best.name))
            continue
        # the roomiest bin is too small; an empty bin elsewhere may still take it
        empty = next((b for _, _, b in heap if b.empty), None)
        if empty is not None:
            empty.room -= need
            empty.empty = False
            heap = [(-b.room, b.name, b) for _, _, b in heap]
            heapq.heapify(heap)
            placed.append((program_id, empty.name))
    return placed
