"""The self-check: gating is kept only where it is measured to pay, and the gate conserves work.

The check is pure, so most tests drive it with epochs of a chosen latency; the harness tests
run the sidecar's scheduler on workloads where the gate loses and where it wins.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thunder_middleware.policy import (
    Admit,
    CallTiming,
    PolicyConfig,
    ProgramScheduler,
    Restore,
    Usage,
)
from thunder_middleware.policy.self_check import GateMode, GatingCheck

PROGRAMS = 8  # epochs close after max(self_check_min_calls, programs) calls
CONFIG = PolicyConfig(self_check_min_calls=8)


class Driver:
    """Feeds a GatingCheck epochs in which every call spends ``latency`` on the LLM side."""

    def __init__(self, config: PolicyConfig = CONFIG) -> None:
        self.check = GatingCheck(config)
        self.now = 0.0
        self.modes: list[GateMode] = []

    def epoch(self, latency: dict[GateMode, float], *, lost_share: float = 0.5) -> GateMode:
        """One epoch in the current mode; ``lost_share`` of each call is re-prefill it lost."""
        check = self.check
        mode = check.mode
        self.modes.append(mode)
        for _ in range(check.epoch_calls(PROGRAMS)):
            arrived = self.now
            epoch = check.arrive(arrived)
            self.now += latency[mode]
            check.call_done(epoch, arrived, self.now, 1000.0, int(1000 * (1 - lost_share)),
                            lost_share * latency[mode])
            if check.end_epoch_if_due(self.now, PROGRAMS, 0, 0.0):
                break
        return check.mode


GATE_LOSES = {GateMode.PASS: 1.0, GateMode.GATE: 1.5}
GATE_WINS = {GateMode.PASS: 1.0, GateMode.GATE: 0.6}


def test_starts_in_pass_through_and_never_explores_without_lost_context() -> None:
    driver = Driver()
    for _ in range(40):
        driver.epoch(GATE_WINS, lost_share=0.0)
    assert set(driver.modes) == {GateMode.PASS}
    assert driver.check.main is GateMode.PASS
    assert driver.check.last_change is None


def test_gating_that_loses_is_explored_ever_more_rarely() -> None:
    driver = Driver()
    for _ in range(120):
        driver.epoch(GATE_LOSES)
    assert driver.check.main is GateMode.PASS
    gate_epochs = [i for i, mode in enumerate(driver.modes) if mode is GateMode.GATE]
    gaps = [b - a for a, b in itertools.pairwise(gate_epochs)]
    # exploration backs off (2, 4, 8, 16 main epochs after the one that pairs it) and stays
    # at the cap
    assert gaps == sorted(gaps) and gaps[-1] == CONFIG.self_check_max_backoff + 2, gaps
    assert len(gate_epochs) <= 12, "exploring must cost a bounded share of the epochs"
    assert driver.check.estimated_gain is not None and driver.check.estimated_gain < 1.0


def test_gating_that_pays_becomes_the_main_mode_and_says_why() -> None:
    driver = Driver()
    for _ in range(4):
        driver.epoch(GATE_WINS)
    assert driver.check.main is GateMode.GATE
    change = driver.check.last_change
    assert change is not None and change.mode is GateMode.GATE
    assert "gate measured" in change.reason and "in pass" in change.reason
    assert driver.check.estimated_gain == pytest.approx(1.0 / 0.6)
    for _ in range(40):
        driver.epoch(GATE_WINS)
    assert driver.check.main is GateMode.GATE
    assert driver.modes[-20:].count(GateMode.GATE) >= 18, "a winning gate runs most epochs"


def test_returns_to_pass_through_when_the_workload_changes_and_back_again() -> None:
    driver = Driver()
    for _ in range(30):
        driver.epoch(GATE_WINS)
    assert driver.check.main is GateMode.GATE
    # the fleet changes: gating stops paying. Within one full backoff the check notices.
    for _ in range(CONFIG.self_check_max_backoff + 3):
        driver.epoch(GATE_LOSES)
        if driver.check.main is GateMode.PASS:
            break
    assert driver.check.main is GateMode.PASS
    for _ in range(7):
        driver.epoch(GATE_WINS)
        if driver.check.main is GateMode.GATE:
            break
    assert driver.check.main is GateMode.GATE, "pass-through questions itself at once"


def test_a_gate_within_the_margin_does_not_displace_pass_through() -> None:
    driver = Driver()
    slightly = {GateMode.PASS: 1.0, GateMode.GATE: 1.0 - CONFIG.self_check_margin / 2}
    for _ in range(30):
        driver.epoch(slightly)
    assert driver.check.main is GateMode.PASS


@pytest.mark.parametrize("config", [
    PolicyConfig(self_check=False), PolicyConfig(cost_aware=False),
])
def test_without_the_check_the_gate_always_runs(config: PolicyConfig) -> None:
    driver = Driver(config)
    for _ in range(10):
        driver.epoch(GATE_LOSES)
    assert set(driver.modes) == {GateMode.GATE}


def test_a_call_held_past_its_epoch_is_charged_to_the_mode_it_arrived_in() -> None:
    """A request held at the gate for longer than the epoch counts its whole wait against
    the epoch (and so the mode) it arrived in, not the one in which it is finally served."""
    check = GatingCheck(PolicyConfig(self_check_min_calls=4))
    held = check.arrive(0.0)
    for i in range(4):  # four quick calls close the epoch while the held one still waits
        epoch = check.arrive(float(i))
        check.call_done(epoch, float(i), i + 1.0, 0.0, 0, 0.0)
    check.end_epoch_if_due(4.0, 1, 0, 0.0)
    assert check._epochs[held].latency(4.0) == pytest.approx((4 * 1.0 + 4.0) / 5)
    check.call_done(held, 0.0, 30.0, 0.0, 0, 0.0)
    assert check._epochs[held].latency(30.0) == pytest.approx((4 * 1.0 + 30.0) / 5)
    assert check._epochs[check._current].done == 0


# --- the scheduler --------------------------------------------------------------------------
def _scheduler(**overrides: object) -> ProgramScheduler:
    sched = ProgramScheduler(PolicyConfig.model_validate({"self_check_min_calls": 4, **overrides}))
    sched.add_backend("b", 10_000, 0.0)
    return sched


def test_the_scheduler_runs_pass_through_until_gating_is_measured() -> None:
    """In pass-through nothing waits: demand far above capacity is admitted at once."""
    sched = _scheduler()
    now = 1.0
    for i in range(6):
        decisions = sched.on_request(f"p{i}", now, 0, 4_000)
        assert any(isinstance(d, Restore) for d in decisions), decisions
    assert sched.backend_views(now)[0].gating == "pass"
    assert all(view.waiting_requests == 0 for view in sched.programs())


@settings(max_examples=60, deadline=None)
@given(
    contexts=st.lists(st.integers(100, 3_000), min_size=1, max_size=8),
    new=st.integers(50, 3_000),
    elapsed=st.floats(0.0, 30.0),
)
def test_the_gate_conserves_work(contexts: list[int], new: int, elapsed: float) -> None:
    """Gate mode: a request whose admission evicts nothing (every bound program's whole
    context, its reply and the new request fit in the engine) is never held back."""
    capacity = 20_000
    sched = ProgramScheduler(PolicyConfig(self_check=False))
    sched.add_backend("b", capacity, 0.0)
    now = 1.0
    for i, c in enumerate(contexts):
        decisions = sched.on_request(f"p{i}", now, 0, c)
        if not any(isinstance(d, (Admit, Restore)) for d in decisions):
            continue
        sched.on_request_done(f"p{i}", now + 0.5, Usage(c, 50, 0), CallTiming(0, 0.1, 0.5))
    now += 0.5 + elapsed
    held = sum(v.c + 50 for v in sched.programs() if v.backend is not None)
    decisions = sched.on_request("new", now, 0, new)
    if held + new + 50 <= capacity:
        assert any(isinstance(d, (Admit, Restore)) and d.program_id == "new"
                   for d in decisions), (held, new, decisions)
