"""ProgramScheduler: the program-aware policy of DESIGN section 3 behind contract 2.

Pure and clock-injected: every entry point takes ``now`` and returns the decisions the
runtime must apply, in order. The runtime (live sidecar or virtual-time simulator) never
changes program state itself, which is what makes the same object drive both.

One pass after every event (``_settle``): relieve the backends the event made heavier,
rescue programs whose request waited past the starvation bound, then restore from the one
global queue into the backends below their low watermark.
"""

from __future__ import annotations

from collections import OrderedDict

from thunder_middleware.policy.backend import BackendState
from thunder_middleware.policy.config import PolicyConfig
from thunder_middleware.policy.demand import decay
from thunder_middleware.policy.estimators import CharsPerToken, StepShape
from thunder_middleware.policy.placement import Bin, place_decreasing
from thunder_middleware.policy.program import ProgramRecord
from thunder_middleware.policy.types import (
    Admit,
    CallTiming,
    Decision,
    Expire,
    MarkForPause,
    Pause,
    Restore,
    Status,
    Usage,
)
from thunder_middleware.policy.views import BackendView, ProgramView, backend_view, program_view
from thunder_middleware.policy.waiting_queue import WaitingQueue

# a program whose decayed share is below this frees nothing by being paused
_NEGLIGIBLE_TOKENS = 1.0


class ProgramScheduler:
    """Decides which program runs on which backend, and when (contract 2)."""

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
        self._now = float("-inf")
        # paused for pressure during the current call: not restored again by the same call
        self._paused_in_call: set[str] = set()

    # --- backends ----------------------------------------------------------------------
    def add_backend(self, name: str, capacity_tokens: int, now: float) -> list[Decision]:
        now = self._begin(now)
        backend = self._backends.get(name)
        if backend is None:
            self._backends[name] = BackendState(name, capacity_tokens, self.config, now)
        else:  # re-registration after a runtime restart: same backend, fresh capacity
            backend.capacity = capacity_tokens
            backend.healthy = True
        return self._settle(now, [], [self._backends[name]])

    def update_backend(
        self,
        name: str,
        now: float,
        *,
        healthy: bool | None = None,
        capacity_tokens: int | None = None,
        kv_usage: float | None = None,
    ) -> list[Decision]:
        now = self._begin(now)
        backend = self._backends.get(name)
        if backend is None:
            raise KeyError(f"unknown backend {name!r}")
        out: list[Decision] = []
        if capacity_tokens is not None:
            backend.capacity = capacity_tokens
        if kv_usage is not None:
            backend.kv_usage = kv_usage  # shown only: see backend.py on why it is not trusted
        if healthy is not None and healthy != backend.healthy:
            backend.healthy = healthy
            if not healthy:
                self._evacuate(backend, now, out)
        return self._settle(now, out, [backend])

    # --- program events ----------------------------------------------------------------
    def on_request(
        self,
        program_id: str,
        now: float,
        prompt_chars: int,
        prompt_tokens_hint: int | None = None,
    ) -> list[Decision]:
        now = self._begin(now)
        out: list[Decision] = []
        estimate = (
            float(prompt_tokens_hint)
            if prompt_tokens_hint is not None
            else self._chars_per_token.tokens(prompt_chars)
        )
        rec = self._programs.get(program_id)
        if rec is None:
            rec = ProgramRecord(
                program_id=program_id,
                c=max(estimate, 1.0),
                created_at=now,
                waiting=1,
                waiting_since=now,
                queued_since=now,
                last_prompt_chars=prompt_chars,
            )
            self._programs[program_id] = rec
            self._queue.push(rec)
            return self._settle(now, out, [])
        if rec.waiting == 0 and rec.inflight == 0:
            if rec.steps > 0:
                self._shape.observe_tool(now - rec.acting_since)
            self._idle.pop(program_id, None)
        rec.last_prompt_chars = prompt_chars
        self._set_c(rec, max(rec.c, estimate))
        rec.waiting += 1
        if rec.waiting_since is None:
            rec.waiting_since = now
        if rec.status is Status.ACTIVE and not rec.marked and rec.backend is not None:
            backend = self._backends[rec.backend]
            self._account(rec, backend)
            # the arrival may push its backend over: pauses come first, and if the arriving
            # program itself is the one to go, it has not been sent, so it is paused, not marked
            self._relieve(backend, now, out, frozenset())
            # paused by that check: waits in the queue; marked by it (an earlier call of the
            # same program is in flight): waits at the gate until the pause and a restore
            if rec.status is Status.ACTIVE and not rec.marked:
                self._dispatch(rec, now)
                out.append(Admit(program_id, backend.name))
        elif rec.status is Status.PAUSED:
            self._queue.reclassify(rec)
        # else: marked for pause; the request waits at the gate until the program is restored
        return self._settle(now, out, [])

    def on_request_done(
        self,
        program_id: str,
        now: float,
        usage: Usage | None,
        timing: CallTiming | None,
    ) -> list[Decision]:
        now = self._begin(now)
        out: list[Decision] = []
        rec = self._programs.get(program_id)
        if rec is None or rec.inflight == 0:
            return self._settle(now, out, [])
        rec.inflight -= 1
        first_call = rec.steps == 0
        rec.steps += 1
        backend = self._backends.get(rec.backend) if rec.backend is not None else None
        if usage is not None:
            tokens = usage.prompt_tokens + usage.completion_tokens
            if first_call and backend is not None:
                backend.observe_first_call(usage.cached_tokens, usage.prompt_tokens)
            self._chars_per_token.observe(rec.last_prompt_chars, usage.prompt_tokens)
            self._shape.observe_call(
                usage, timing.total_s if timing is not None else now - rec.dispatched_at
            )
            if timing is not None and backend is not None:
                backend.rates.observe(usage, timing)
            self._set_c(rec, float(max(tokens, 1)))
        if rec.inflight == 0 and rec.waiting == 0:
            rec.acting_since = now
            self._idle[program_id] = now
            self._idle.move_to_end(program_id)
        check: list[BackendState] = []
        if rec.status is Status.ACTIVE and backend is not None:
            if rec.marked and rec.inflight == 0:
                self._pause(rec, now, out, again_this_call=not backend.healthy)
            elif not rec.marked:
                self._account(rec, backend)
            check.append(backend)
        return self._settle(now, out, check)

    def on_request_abandoned(self, program_id: str, now: float) -> list[Decision]:
        now = self._begin(now)
        rec = self._programs.get(program_id)
        if rec is None or rec.waiting == 0:
            return self._settle(now, [], [])
        rec.waiting -= 1
        if rec.waiting == 0:
            rec.waiting_since = None
            rec.starving = False
            if rec.inflight == 0:
                rec.acting_since = now
                self._idle[program_id] = now
                self._idle.move_to_end(program_id)
        if rec.status is Status.PAUSED:
            self._queue.reclassify(rec)
        return self._settle(now, [], [])

    def on_release(self, program_id: str, now: float) -> list[Decision]:
        now = self._begin(now)
        if program_id in self._programs:
            self._forget(program_id)
        return self._settle(now, [], [])

    def tick(self, now: float) -> list[Decision]:
        now = self._begin(now)
        out: list[Decision] = []
        deadline = now - self.config.idle_timeout_s
        while self._idle:
            program_id, since = next(iter(self._idle.items()))
            if since > deadline:
                break
            self._forget(program_id)
            out.append(Expire(program_id))
        shape = self._shape
        fallback = shape.context_tokens.value
        self._adapt_decay(now)
        for backend in self._backends.values():
            backend.refresh_lambda(shape.reasoning_s.value, shape.tool_s.value, fallback)
        return self._settle(now, out, list(self._backends.values()))

    # --- read-only views -----------------------------------------------------------------
    def program(self, program_id: str) -> ProgramView | None:
        rec = self._programs.get(program_id)
        return None if rec is None else program_view(rec)

    def programs(self) -> list[ProgramView]:
        return [program_view(rec) for rec in self._programs.values()]

    def backend_views(self, now: float) -> list[BackendView]:
        return [backend_view(b, now) for b in self._backends.values()]

    def restore_order(self, limit: int) -> list[str]:
        return self._queue.head(limit)

    @property
    def learned_chars_per_token(self) -> float:
        return self._chars_per_token.value

    @property
    def decay_base(self) -> float:
        """The x of f(t) = x^-t in use (cost-aware: adapted to the learned tool time)."""
        return self._decay_base

    @property
    def learned_step_shape(self) -> tuple[float, float]:
        """(mean reasoning seconds, mean tool seconds) as the cost model sees them."""
        return self._shape.reasoning_s.value, self._shape.tool_s.value

    def _adapt_decay(self, now: float) -> None:
        """Cost-aware: the decay's half-life follows the learned mean tool time.

        f(t) = x^-t gives an acting program's memory away after a few half-lives; with the
        published x = 2 (half-life 1 s) a 0.5-10 s tool loses its cache before it returns.
        Half-life = decay_tool_halflives * mean tool time keeps the memory of programs that
        are likely to come back soon and still frees that of long tools. Re-based only
        when x moves by more than 5 %, since it costs O(programs).
        """
        tool_s = self._shape.tool_s
        if not self.config.cost_aware or tool_s.samples < self.config.cost_min_samples:
            return
        halflife = self.config.decay_tool_halflives * max(tool_s.value, 0.05)
        base = min(max(2.0 ** (1.0 / halflife), 1.0 + 1e-6), self.config.decay_base)
        if abs(base - self._decay_base) <= 0.05 * (self._decay_base - 1.0):
            return
        self._decay_base = base
        for backend in self._backends.values():
            backend.demand.set_decay_base(base, now)

    # --- the pass after every event ------------------------------------------------------
    def _begin(self, now: float) -> float:
        """Clamp time to be monotone (a late event never moves the decay backwards)."""
        self._paused_in_call.clear()
        if now > self._now:
            self._now = now
        return self._now

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
        while index < len(acting) and backend.over(now):
            _, pid = acting[index]
            if pid in protected or demand.acting.contribution(pid, now) < _NEGLIGIBLE_TOKENS:
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
        """Does any program other than this one still count on the backend?"""
        demand = backend.demand
        if demand.reasoning_count > (0 if program_id in demand.acting else 1):
            return True
        acting = demand.acting
        return any(
            pid != program_id and acting.contribution(pid, now) >= _NEGLIGIBLE_TOKENS
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
                room = b.high_watermark - occupied
                bins.append(Bin(b.name, max(room, 0.0), occupied < _NEGLIGIBLE_TOKENS))
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
        if rec.backend is not None:
            self._unbind(rec)
        self._queue.remove(program_id)
        self._idle.pop(program_id, None)
        rec.status = Status.TERMINATED
