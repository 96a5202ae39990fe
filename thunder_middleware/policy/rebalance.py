"""The checks run after every event: relieve, rescue the starving, restore (DESIGN 3).

Relieve pauses programs on a backend over its high watermark (acting before reasoning,
smallest c first); the rescue bounds how long a request can wait; the restore pass fills
backends below their low watermark from the one global queue, best-fit-decreasing.
"""

from __future__ import annotations

from thunder_middleware.policy.backend import BackendState
from thunder_middleware.policy.placement import Bin, place_decreasing
from thunder_middleware.policy.state import SchedulerState
from thunder_middleware.policy.types import Decision, MarkForPause

# a program whose decayed share is below this frees nothing by being paused
NEGLIGIBLE_TOKENS = 1.0


class Rebalancer(SchedulerState):
    """The decision rules on top of the state transitions."""

    def _settle(self, now: float, out: list[Decision], check: list[BackendState]) -> list[Decision]:
        for backend in check:
            self._relieve(backend, now, out, frozenset())
        self._rescue_starving(now, out)
        self._restore_pass(now, out)
        return out

    def _relieve(
        self, backend: BackendState, now: float, out: list[Decision], protected: frozenset[str]
    ) -> None:
        """Pause until the backend fits its high watermark: acting first, smallest c first.

        Acting programs whose decayed share is negligible are skipped (pausing them frees
        nothing), and the last program that still counts is never paused: it would only come
        back to the emptied backend (an empty backend takes anything), so no pause can fix
        an excess that one program causes alone.
        """
        if not backend.healthy or not backend.over(now):
            return
        demand = backend.demand
        acting = demand.acting_by_c()
        index = 0
        while index < len(acting) and backend.over_total(now):
            _, pid = acting[index]
            if pid in protected or demand.acting.contribution(pid, now) < NEGLIGIBLE_TOKENS:
                index += 1
                continue
            if not self._others_count(backend, pid, now):
                return
            self._pause(self._programs[pid], now, out, again_this_call=False)  # leaves `acting`
        reasoning = demand.reasoning_by_c()
        if self.config.cost_aware:
            # a marked program frees nothing until its call ends, while the engine must hold
            # everyone now: first hold back requests not yet sent (an arrival waits at the
            # gate), and mark in-flight programs only if that is not enough
            for _, pid in list(reasoning):
                if not backend.over(now):
                    return
                rec = self._programs[pid]
                if rec.inflight == 0 and pid not in protected:
                    if not self._others_count(backend, pid, now):
                        return
                    self._pause(rec, now, out, again_this_call=False)
        index = 0
        while index < len(reasoning) and backend.over(now):
            _, pid = reasoning[index]
            if pid in protected:
                index += 1
                continue
            if not self._others_count(backend, pid, now):
                return
            rec = self._programs[pid]
            if rec.inflight > 0:
                rec.marked = True
                demand.mark(pid)  # leaves `reasoning`
                out.append(MarkForPause(pid, backend.name))
            else:  # still at the gate: nothing to cut, pause it outright
                self._pause(rec, now, out, again_this_call=False)

    def _others_count(self, backend: BackendState, program_id: str, now: float) -> bool:
        """Does any program other than this one still count on the backend?

        When only the in-flight limit is exceeded (cost-aware overcommit), only other
        reasoning programs count: acting ones do not hold what is over the limit.
        """
        demand = backend.demand
        if demand.reasoning_count > (0 if program_id in demand.acting else 1):
            return True
        if not backend.over_total(now):
            return False
        acting = demand.acting
        return any(
            pid != program_id and acting.contribution(pid, now) >= NEGLIGIBLE_TOKENS
            for _, pid in demand.acting_by_c()
        )

    def _rescue_starving(self, now: float, out: list[Decision]) -> None:
        """A request that waited past the bound is restored regardless of class and c.

        Published policy: at once, to the backend with most room, making room there by the
        usual pauses. Cost-aware: it goes to the head of the restore order instead, so it
        is the very next program restored and nobody overtakes it, without forcing the
        engine into an overcommit (at 6x overload a forced restore every few seconds was
        measured to keep the engine preempting).
        """
        starving = self._queue.waiting_since_before(now - self.config.starvation_bound_s)
        for pid in starving:
            rec = self._programs[pid]
            if self.config.cost_aware:
                if not rec.starving:
                    rec.starving = True
                    self._queue.reclassify(rec)
                continue
            healthy = [b for b in self._backends.values() if b.healthy]
            if not healthy:
                return
            target = min(healthy, key=lambda b: (b.occupied(now) - b.high_watermark, b.name))
            self._restore(rec, target, now, out)
            self._relieve(target, now, out, frozenset((pid,)))

    def _restore_pass(self, now: float, out: list[Decision]) -> None:
        """Restore in queue order into every healthy backend below its low watermark.

        Selection walks the queue (reasoning, new, acting; smallest c first) while the total
        room lasts and stops at the first program that does not fit, so nothing jumps ahead
        of a waiting client; placement is best-fit-decreasing over the selected programs.
        """
        if not len(self._queue):
            return
        bins: list[Bin] = []
        for b in self._backends.values():
            if not b.healthy or now < b.below_low_from():
                continue
            occupied = b.occupied(now)
            if occupied < b.low_watermark:
                room = b.room(now)
                bins.append(Bin(b.name, max(room, 0.0), occupied < NEGLIGIBLE_TOKENS))
        if not bins:
            return
        room = sum(b.room for b in bins)
        largest = max(b.room for b in bins)
        empties = sum(1 for b in bins if b.empty)
        selected: list[tuple[str, float]] = []
        for pid in self._queue.in_order():
            if pid in self._paused_in_call:
                continue
            need = self._need(self._programs[pid], now)
            if need <= room and need <= largest:
                room -= need
            elif empties:
                empties -= 1
            else:
                break
            selected.append((pid, need))
        for pid, name in place_decreasing(selected, bins):
            self._restore(self._programs[pid], self._backends[name], now, out)
