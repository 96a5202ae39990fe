"""ProgramScheduler: the program-aware policy of DESIGN section 3 behind contract 2.

Pure and clock-injected: every entry point takes ``now`` and returns the decisions the
runtime must apply, in order. The runtime (live sidecar or virtual-time simulator) never
changes program state itself, which is what makes the same object drive both.

One pass after every event (``_settle``): relieve the backends the event made heavier,
rescue programs whose request waited past the starvation bound, then restore from the one
global queue into the backends below their low watermark.
"""

from __future__ import annotations

from thunder_middleware.policy.backend import BackendState
from thunder_middleware.policy.estimators import prefill_work
from thunder_middleware.policy.program import ProgramRecord
from thunder_middleware.policy.rebalance import Rebalancer
from thunder_middleware.policy.self_check import GatingCheck
from thunder_middleware.policy.types import (
    Admit,
    CallTiming,
    Decision,
    Expire,
    Status,
    Usage,
)
from thunder_middleware.policy.views import BackendView, ProgramView, backend_view, program_view


class ProgramScheduler(Rebalancer):
    """Decides which program runs on which backend, and when (contract 2)."""

    # --- backends ----------------------------------------------------------------------
    def add_backend(self, name: str, capacity_tokens: int, now: float) -> list[Decision]:
        now = self._begin(now)
        backend = self._backends.get(name)
        if backend is None:
            backend = BackendState(name, capacity_tokens, self.config, now)
            backend.passthrough = self._passthrough
            if self._decay_base != self.config.decay_base:  # adapted since start (cost-aware)
                backend.demand.set_decay_base(self._decay_base, now)
            self._backends[name] = backend
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
            self._charge_arrival(rec, now)
            self._queue.push(rec)
            return self._settle(now, out, [])
        if rec.waiting == 0 and rec.inflight == 0:
            if rec.steps > 0:
                self._shape.observe_tool(now - rec.acting_since)
            self._idle.pop(program_id, None)
            self._charge_arrival(rec, now)
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
            if rec.inflight == 0 and rec.waiting == 0:
                self._observe_call(rec, backend, usage, now)
            rec.reusable = float(tokens)
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
        if rec.inflight == 0 and rec.waiting == 0:
            self._drop_charge(rec)  # failed: not measured
        # counting the calls in flight is O(programs): only when an epoch closes
        if self._check.epoch_due(len(self._programs)) and self._check.end_epoch_if_due(
                now, len(self._programs), self._inflight(), self._shape.tool_s.value):
            self._apply_mode()
            check.extend(b for b in self._backends.values() if b is not backend)
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
        if rec.waiting == 0 and rec.inflight == 0:
            self._drop_charge(rec)
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

    def on_activity(self, program_id: str, now: float) -> list[Decision]:
        """Work outside the LLM (a tool running through the sidecar) is a sign of life.

        Only the idle-expiry clock restarts: a program whose agent runs a long tool must not
        be expired as crashed. Its acting time (tool-time learning, decay) is untouched, and
        nothing else changes, so no decisions follow.
        """
        now = self._begin(now)
        if program_id in self._idle:
            self._idle[program_id] = now
            self._idle.move_to_end(program_id)
        return []

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

    def _charge_arrival(self, rec: ProgramRecord, now: float) -> None:
        rec.arrived_at = now
        rec.check_epoch = self._check.arrive(now)

    def _inflight(self) -> int:
        return sum(rec.inflight for rec in self._programs.values())

    def _observe_call(
        self, rec: ProgramRecord, backend: BackendState | None, usage: Usage, now: float
    ) -> None:
        """The call's LLM-side time, and the self-check's evidence: how much of its own last
        context the engine still had."""
        expected = min(rec.reusable, float(usage.prompt_tokens))
        missed = max(expected - usage.cached_tokens, 0.0)
        missed_s = 0.0
        if missed > 0.0 and backend is not None:
            rate = backend.rates.prefill_rate
            if rate is not None:
                cached = float(usage.cached_tokens)
                missed_s = prefill_work(missed, cached, backend.rates.attention_context) / rate
        self._check.call_done(rec.check_epoch, rec.arrived_at, now, expected,
                              usage.cached_tokens, missed_s)
        rec.check_epoch = -1

    # --- read-only views -----------------------------------------------------------------
    def program(self, program_id: str) -> ProgramView | None:
        rec = self._programs.get(program_id)
        return None if rec is None else program_view(rec)

    def programs(self) -> list[ProgramView]:
        return [program_view(rec) for rec in self._programs.values()]

    def backend_views(self, now: float) -> list[BackendView]:
        gain = self._check.estimated_gain
        return [backend_view(b, now, gain) for b in self._backends.values()]

    def restore_order(self, limit: int) -> list[str]:
        return self._queue.head(limit)

    @property
    def gating(self) -> GatingCheck:
        """The self-check (read it, do not drive it): mode, estimated gain, last change."""
        return self._check

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
