"""Hypothesis state machines: any sequence of events keeps the policy's promises.

Events: backends added, requests arriving, completing (with or without usage), abandoned,
programs released, ticks, time passing, health flapping, KV-usage gauges. After every step:

- every live program is in exactly one place (active on one backend xor queued), and the
  runtime's picture (built only from decisions) agrees with the scheduler's;
- no healthy backend's committed demand exceeds its high watermark while a pause could fix it;
- the programs paused for pressure are the cheapest that suffice: acting before reasoning,
  smallest c first;
- no request waits at the gate past the starvation bound;
- decisions are consistent when applied in order (checked by RuntimeModel as they are applied).

The published policy (cost_aware=False) is checked with lambda_max itself as the watermark;
the cost-aware one with its own lambda_eff, which must never be below lambda_max.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from thunder_middleware.policy import (
    CallTiming,
    Decision,
    MarkForPause,
    Pause,
    PolicyConfig,
    ProgramScheduler,
    ProgramView,
    Restore,
    Status,
    Usage,
    decay,
)

from .runtime_model import RuntimeModel

PROGRAMS = [f"p{i}" for i in range(10)]
BACKENDS = ["b0", "b1", "b2"]
NEGLIGIBLE = 1.0
STARVATION_S = 40.0


class PolicyMachine(RuleBasedStateMachine):
    cost_aware = False

    def __init__(self) -> None:
        super().__init__()
        config = PolicyConfig(
            cost_aware=self.cost_aware,
            starvation_bound_s=STARVATION_S,
            idle_timeout_s=200.0,
            lambda_min=0.8,
            lambda_max=1.0,
            cost_min_samples=1,
        )
        self.rt = RuntimeModel(ProgramScheduler(config))
        self.now = 0.0
        self.last: list[Decision] = []
        self.evacuation = False
        self.last_call = 0.0  # time of the last scheduler call: its checks ran then

    # --- rules -----------------------------------------------------------------------
    @precondition(lambda self: len(self.rt.healthy) < len(BACKENDS))
    @rule(capacity=st.integers(500, 6000))
    def add_backend(self, capacity: int) -> None:
        name = BACKENDS[len(self.rt.healthy)]
        self._record(self.rt.add_backend(name, capacity, self.now))

    @rule(pid=st.sampled_from(PROGRAMS), tokens=st.integers(20, 4000))
    def request(self, pid: str, tokens: int) -> None:
        self._record(self.rt.request(pid, self.now, tokens))

    @rule(
        data=st.data(),
        grow=st.integers(0, 1500),
        completion=st.integers(1, 400),
        failed=st.booleans(),
        prefill_s=st.floats(0.001, 5.0),
    )
    def done(
        self, data: st.DataObject, grow: int, completion: int, failed: bool, prefill_s: float
    ) -> None:
        busy = sorted(pid for pid, gate in self.rt.programs.items() if gate.upstream > 0)
        if not busy:
            return
        pid = data.draw(st.sampled_from(busy))
        view = self.rt.scheduler.program(pid)
        assert view is not None
        usage = None if failed else Usage(int(view.c) + grow, completion, int(view.c) // 2)
        timing = None if failed else CallTiming(0.0, prefill_s, prefill_s + completion * 0.02)
        self._record(self.rt.done(pid, self.now, usage, timing))

    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        waiting = sorted(pid for pid, gate in self.rt.programs.items() if gate.gate > 0)
        if waiting:
            self._record(self.rt.abandon(data.draw(st.sampled_from(waiting)), self.now))

    @rule(pid=st.sampled_from(PROGRAMS))
    def release(self, pid: str) -> None:
        self._record(self.rt.release(pid, self.now))

    @rule()
    def tick(self) -> None:
        self._record(self.rt.tick(self.now))

    @rule(dt=st.floats(0.0, 30.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: bool(self.rt.healthy))
    @rule(data=st.data(), healthy=st.booleans())
    def set_health(self, data: st.DataObject, healthy: bool) -> None:
        name = data.draw(st.sampled_from(sorted(self.rt.healthy)))
        self._record(self.rt.set_health(name, healthy, self.now), evacuation=not healthy)

    @precondition(lambda self: bool(self.rt.healthy))
    @rule(data=st.data(), usage=st.floats(0.0, 1.0))
    def kv_usage(self, data: st.DataObject, usage: float) -> None:
        name = data.draw(st.sampled_from(sorted(self.rt.healthy)))
        self._record(
            self.rt.apply(self.rt.scheduler.update_backend(name, self.now, kv_usage=usage))
        )

    def _record(self, decisions: list[Decision], *, evacuation: bool = False) -> None:
        self.last = decisions
        self.evacuation = evacuation
        self.last_call = self.now

    # --- invariants ----------------------------------------------------------------------
    @invariant()
    def every_program_in_exactly_one_place(self) -> None:
        sched = self.rt.scheduler
        views = {v.program_id: v for v in sched.programs()}
        assert set(views) == set(self.rt.programs)
        queued = sched.restore_order(10_000)
        assert len(queued) == len(set(queued))
        bound_count: dict[str, int] = {}
        for pid, view in views.items():
            gate = self.rt.programs[pid]
            assert view.backend == gate.bound_to
            assert view.waiting_requests == gate.gate
            assert view.inflight_requests == gate.upstream
            assert view.marked_for_pause == gate.marked
            if view.status is Status.ACTIVE:
                assert view.backend is not None and pid not in queued
                bound_count[view.backend] = bound_count.get(view.backend, 0) + 1
            else:
                assert view.status is Status.PAUSED
                assert view.backend is None and pid in queued
        for b in sched.backend_views(self.now):
            assert b.programs == bound_count.get(b.name, 0)

    @invariant()
    def no_backend_over_watermark_while_a_pause_could_fix_it(self) -> None:
        sched = self.rt.scheduler
        for b in sched.backend_views(self.now):
            assert b.lambda_eff >= sched.config.lambda_max
            if self.cost_aware is False:
                assert b.lambda_eff == sched.config.lambda_max
            if not b.healthy or b.demand <= b.high_watermark * (1 + 1e-9) + 1e-6:
                continue
            counting = [
                v
                for v in sched.programs()
                if v.backend == b.name and not v.marked_for_pause and _share(v, self) >= NEGLIGIBLE
            ]
            assert len(counting) <= 1, (b, counting)

    @invariant()
    def paused_programs_are_the_cheapest_that_suffice(self) -> None:
        if self.evacuation:
            return
        sched = self.rt.scheduler
        restored = {d.program_id for d in self.last if isinstance(d, Restore)}
        for backend in {d.backend for d in self.last if isinstance(d, Pause | MarkForPause)}:
            if not next(b for b in sched.backend_views(self.now) if b.name == backend).healthy:
                continue
            # a Pause that completes an earlier MarkForPause was chosen then, not now
            paused = [
                sched.program(d.program_id)
                for d in self.last
                if isinstance(d, Pause | MarkForPause)
                and d.backend == backend
                and d.program_id not in self.rt.completed_marks
            ]
            remaining = [
                v
                for v in sched.programs()
                if v.backend == backend
                and not v.marked_for_pause
                and v.program_id not in restored
                and _share(v, self) >= NEGLIGIBLE
            ]
            marked = {d.program_id for d in self.last if isinstance(d, MarkForPause)}
            paused_acting = [
                v
                for v in paused
                if v is not None and v.program_id not in marked and v.waiting_requests == 0
            ]
            at_gate = [
                v
                for v in paused
                if v is not None and v.waiting_requests > 0 and v.program_id not in marked
            ]
            paused_marked = [v for v in paused if v is not None and v.program_id in marked]
            acting_left = [v for v in remaining if v.acting_since is not None]
            reasoning_left = [v for v in remaining if v.acting_since is None]
            if (at_gate or paused_marked) and not self.cost_aware:
                # acting before reasoning: no acting program that counts is left behind
                # (cost-aware: requests in flight have a limit of their own, lambda_max * C,
                # which pausing acting programs cannot relieve)
                assert not acting_left, (paused, remaining)
            groups = [(paused_acting, acting_left)]
            if self.cost_aware:
                # requests not yet sent are held back before in-flight ones are marked
                groups.append((paused_marked, reasoning_left))
            else:
                groups.append((at_gate + paused_marked, reasoning_left))
            for group, left in groups:
                if group and left:
                    assert max(v.c for v in group) <= min(v.c for v in left) + 1e-9

    @invariant()
    def nothing_waits_past_the_starvation_bound(self) -> None:
        sched = self.rt.scheduler
        if not any(b.healthy for b in sched.backend_views(self.now)):
            return
        # checked at the last call's time: between calls a request can wait longer, by at
        # most the runtime's tick period
        starved = {
            view.program_id
            for view in sched.programs()
            if view.status is Status.PAUSED
            and view.waiting_since is not None
            and self.last_call - view.waiting_since >= STARVATION_S
        }
        if not self.cost_aware:
            assert not starved  # restored regardless, at once
        else:  # first in the restore order: nobody can be restored before them
            assert set(sched.restore_order(len(starved))) == starved


def _share(view: ProgramView, machine: PolicyMachine) -> float:
    """The program's current contribution to its backend's demand (uncorrected)."""
    if view.acting_since is None:
        return view.c
    base = machine.rt.scheduler.decay_base
    return view.c * decay(base, machine.now - view.acting_since)


class CostAwareMachine(PolicyMachine):
    cost_aware = True


_settings = settings(
    max_examples=int(os.environ.get("POLICY_EXAMPLES", "60")),
    stateful_step_count=60,
    deadline=None,
    # the explain phase traces every line (slow on Python 3.11) and adds nothing here
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow],
)
TestPublishedPolicy = PolicyMachine.TestCase
TestPublishedPolicy.settings = _settings
TestCostAwarePolicy = CostAwareMachine.TestCase
TestCostAwarePolicy.settings = _settings
