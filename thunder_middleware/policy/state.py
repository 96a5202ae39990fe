"""The scheduler's state and its transitions: bind, unbind, pause, restore, forget.

Every transition keeps three structures consistent at once: the program record, its
backend's demand sums, and the global waiting queue. Policy (who to pause, who to restore)
lives in rebalance.py; the public event API in scheduler.py.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from thunder_middleware.policy.backend import BackendState
from thunder_middleware.policy.config import PolicyConfig
from thunder_middleware.policy.demand import decay
from thunder_middleware.policy.estimators import CharsPerToken, StepShape
from thunder_middleware.policy.program import ProgramRecord
from thunder_middleware.policy.self_check import GateMode, GatingCheck
from thunder_middleware.policy.types import Decision, MarkForPause, Pause, Restore, Status
from thunder_middleware.policy.waiting_queue import WaitingQueue

# the decay base follows the learned tool time, re-based at most this often (O(programs))
_DECAY_ADAPT_PERIOD_S = 60.0


class SchedulerState:
    """Programs, backends and the queue, with the transitions that move programs between them."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config if config is not None else PolicyConfig()
        self._programs: dict[str, ProgramRecord] = {}
        self._backends: dict[str, BackendState] = {}
        self._queue = WaitingQueue()
        # programs with no request at all, oldest first: idle expiry reads only the head
        self._idle: OrderedDict[str, float] = OrderedDict()
        self._chars_per_token = CharsPerToken(
            self.config.default_chars_per_token, self.config.chars_per_token_alpha
        )
        self._shape = StepShape(
            self.config.default_reasoning_s, self.config.default_tool_s, self.config.duration_alpha
        )
        self._decay_base = self.config.decay_base
        self._decay_adapted_at = float("-inf")
        self._now = float("-inf")
        # paused for pressure during the current call: not restored again by the same call
        self._paused_in_call: set[str] = set()
        self._check = GatingCheck(self.config)

    def _begin(self, now: float) -> float:
        """Clamp time to be monotone (a late event never moves the decay backwards)."""
        self._paused_in_call.clear()
        if now > self._now:
            self._now = now
        return self._now

    @property
    def _passthrough(self) -> bool:
        return self._check.mode is GateMode.PASS

    def _apply_mode(self) -> None:
        """Every backend follows the self-check's current mode."""
        passthrough = self._passthrough
        for backend in self._backends.values():
            backend.passthrough = passthrough

    def _drop_charge(self, rec: ProgramRecord) -> None:
        """The program's outstanding call ended unmeasured (failed, abandoned, released)."""
        self._check.call_dropped(rec.check_epoch, rec.arrived_at)
        rec.check_epoch = -1

    def _adapt_decay(self, now: float) -> None:
        """Cost-aware: the decay's half-life follows the learned mean tool time.

        f(t) = x^-t gives an acting program's memory away after a few half-lives; with the
        published x = 2 (half-life 1 s) a 0.5-10 s tool loses its cache before it returns.
        Half-life = decay_tool_halflives * mean tool time keeps the memory of programs that
        are likely to come back soon and still frees that of long tools. Changing x costs
        O(programs) (every decaying sum is recomputed), so it is re-based at most once a
        minute and only when the half-life moved by more than 10 %.
        """
        tool_s = self._shape.tool_s
        if not self.config.cost_aware or tool_s.samples < self.config.cost_min_samples:
            return
        if now - self._decay_adapted_at < _DECAY_ADAPT_PERIOD_S:
            return
        halflife = self.config.decay_tool_halflives * max(tool_s.value, 0.05)
        base = min(max(2.0 ** (1.0 / halflife), 1.0 + 1e-6), self.config.decay_base)
        if abs(math.log(base) - math.log(self._decay_base)) <= 0.1 * math.log(self._decay_base):
            return
        self._decay_base = base
        self._decay_adapted_at = now
        for backend in self._backends.values():
            backend.demand.set_decay_base(base, now)

    # --- state transitions ---------------------------------------------------------------
    def _reasoning_footprint(self, rec: ProgramRecord) -> float:
        """c of a reasoning program; cost-aware, plus the output it is about to decode.

        c is what the program holds when its call starts; by the end it holds the learned
        mean completion more (a few hundred tokens per program, which at 100 reasoning
        programs is a whole backend's headroom).
        """
        if not self.config.cost_aware:
            return rec.c
        return rec.c + self._shape.completion_tokens.value

    def _need(self, rec: ProgramRecord, now: float) -> float:
        """Raw tokens the program adds to a backend's demand if bound now."""
        if rec.waiting or rec.inflight:
            return self._reasoning_footprint(rec)
        return rec.c * decay(self._decay_base, now - rec.acting_since)

    def _account(self, rec: ProgramRecord, backend: BackendState) -> None:
        """Enter the program's current phase and c into its backend's demand sums."""
        if rec.waiting or rec.inflight:
            backend.demand.set_reasoning(rec.program_id, self._reasoning_footprint(rec))
        else:
            backend.demand.set_acting(rec.program_id, rec.c, rec.acting_since)

    def _set_c(self, rec: ProgramRecord, c: float) -> None:
        if rec.backend is not None:
            self._backends[rec.backend].c_total += c - rec.c
        rec.c = c

    def _dispatch(self, rec: ProgramRecord, now: float) -> None:
        rec.inflight += rec.waiting
        rec.waiting = 0
        rec.waiting_since = None
        rec.dispatched_at = now

    def _restore(
        self, rec: ProgramRecord, backend: BackendState, now: float, out: list[Decision]
    ) -> None:
        self._queue.remove(rec.program_id)
        rec.status = Status.ACTIVE
        rec.backend = backend.name
        rec.ever_bound = True
        rec.queued_since = None
        rec.starving = False
        rec.restores += 1
        backend.c_total += rec.c
        backend.program_count += 1
        self._account(rec, backend)
        if rec.waiting:
            self._dispatch(rec, now)
        out.append(Restore(rec.program_id, backend.name))

    def _unbind(self, rec: ProgramRecord) -> str:
        assert rec.backend is not None
        backend = self._backends[rec.backend]
        backend.demand.remove(rec.program_id)
        backend.c_total -= rec.c
        backend.program_count -= 1
        if backend.program_count == 0:
            backend.c_total = 0.0
        rec.backend = None
        rec.marked = False
        return backend.name

    def _pause(
        self, rec: ProgramRecord, now: float, out: list[Decision], *, again_this_call: bool
    ) -> None:
        name = self._unbind(rec)
        rec.status = Status.PAUSED
        rec.queued_since = now
        rec.pauses += 1
        self._queue.push(rec)
        if not again_this_call:
            self._paused_in_call.add(rec.program_id)
        out.append(Pause(rec.program_id, name))

    def _evacuate(self, backend: BackendState, now: float, out: list[Decision]) -> None:
        """An unhealthy backend keeps nothing: acting programs go now, reasoning at completion."""
        for pid in backend.demand.members():
            rec = self._programs[pid]
            if rec.marked:
                continue
            if rec.inflight > 0:
                rec.marked = True
                backend.demand.mark(pid)
                out.append(MarkForPause(pid, backend.name))
            else:
                self._pause(rec, now, out, again_this_call=True)

    def _forget(self, program_id: str) -> None:
        rec = self._programs.pop(program_id)
        self._drop_charge(rec)
        if rec.backend is not None:
            self._unbind(rec)
        self._queue.remove(program_id)
        self._idle.pop(program_id, None)
        rec.status = Status.TERMINATED
