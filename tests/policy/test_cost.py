"""Cost awareness (issue 3 item 2): overcommit where recomputation is cheap, not where not."""

from __future__ import annotations

import pytest

from thunder_middleware.policy import (
    Admit,
    CallTiming,
    CostInputs,
    MarkForPause,
    Pause,
    PolicyConfig,
    ProgramScheduler,
    Restore,
    Usage,
    effective_lambda,
    steps_per_second,
)

from .runtime_model import RuntimeModel


def inputs(recompute_s: float, reasoning_s: float = 5.0, tool_s: float = 5.0) -> CostInputs:
    return CostInputs(
        capacity_tokens=100_000,
        lambda_max=1.0,
        mean_context=10_000,  # K = 10 programs fit
        recompute_s=recompute_s,
        reasoning_s=reasoning_s,
        tool_s=tool_s,
    )


def test_no_overcommit_when_a_recompute_costs_more_than_a_step_cycle() -> None:
    # n_r = K R / (R + T) = 5 reasoning at a time; rho * (n_r + 1) = 3 * 6 = 18 s > 10 s
    assert effective_lambda(inputs(recompute_s=3.0), gain=1.0, max_factor=4.0) == 1.0


def test_overcommit_when_recomputation_is_cheap() -> None:
    # rho * (n_r + 1) = 0.1 * 6 = 0.6 s << 10 s: admitting more programs pays
    lam = effective_lambda(inputs(recompute_s=0.1), gain=1.0, max_factor=4.0)
    assert lam > 1.5
    assert steps_per_second(inputs(0.1), (lam - 1.0) * 10) > steps_per_second(inputs(0.1), 0.0)


def test_break_even_follows_the_marginal_condition() -> None:
    """S'(0) > 0 exactly when rho * (n_r + 1) < R + T (cost.py's docstring)."""
    # n_r = 10 * 5 / 10 = 5; break-even rho = 10 / 6 = 1.667 s
    assert effective_lambda(inputs(recompute_s=1.5), 1.0, 4.0) > 1.0
    assert effective_lambda(inputs(recompute_s=1.8), 1.0, 4.0) == 1.0


def test_long_tools_make_overcommit_pay_short_tools_do_not() -> None:
    assert effective_lambda(inputs(recompute_s=1.0, tool_s=60.0), 1.0, 4.0) > 1.0
    assert effective_lambda(inputs(recompute_s=1.0, tool_s=0.5), 1.0, 4.0) == 1.0


def test_overcommit_is_capped_and_gain_zero_is_the_published_limit() -> None:
    assert effective_lambda(inputs(recompute_s=0.0), 1.0, 2.5) == pytest.approx(2.5)
    assert effective_lambda(inputs(recompute_s=0.01), 0.0, 4.0) == 1.0


def feed(sched: ProgramScheduler, *, prefill_s: float, tool_s: float, n: int = 6) -> None:
    """n finished steps of 1,000-token calls with the given prefill time and tool gaps."""
    now = 0.0
    for i in range(n):
        pid = f"warm{i}"
        sched.on_request(pid, now, 0, 1000)
        now += prefill_s + 1.0
        sched.on_request_done(
            pid, now, Usage(1000, 50, 0), CallTiming(0.0, prefill_s, prefill_s + 1.0)
        )
        now += tool_s
        sched.on_request(pid, now, 0, 1100)
        now += 1.0
        sched.on_request_done(pid, now, Usage(1100, 50, 1000), CallTiming(0.0, 0.01, 1.0))
        sched.on_release(pid, now)
    sched.tick(now)


def lambda_eff(sched: ProgramScheduler) -> float:
    return next(iter(sched.backend_views(0.0))).lambda_eff


@pytest.mark.parametrize(
    ("prefill_s", "tool_s", "overcommits"),
    [
        (0.01, 30.0, True),  # fast prefill, long tools: get out of the way
        (5.0, 1.0, False),  # slow prefill, short tools: pause as published
    ],
)
def test_scheduler_learns_when_to_overcommit(
    prefill_s: float, tool_s: float, overcommits: bool
) -> None:
    sched = ProgramScheduler(PolicyConfig(self_check=False, cost_aware=True))
    sched.add_backend("b", 5000, 0.0)
    feed(sched, prefill_s=prefill_s, tool_s=tool_s)
    assert (lambda_eff(sched) > 1.0) is overcommits
    # four 1,100-token programs finish their calls and start tools: 4,400 tokens of cached
    # contexts. A fifth program (1,100 + output reserve) exceeds 5,000: it is admitted only
    # when overcommitting the acting programs' caches pays
    start = 1e4
    for i in range(4):
        assert any(isinstance(d, Restore) for d in sched.on_request(f"p{i}", start, 0, 1100))
    for i in range(4):
        sched.on_request_done(f"p{i}", start, Usage(1050, 50, 0), CallTiming(0, 0.01, 1))
    decisions = sched.on_request("p4", start, 0, 1100)
    assert any(isinstance(d, Restore) for d in decisions) is overcommits


def test_requests_in_flight_never_exceed_lambda_max_even_when_overcommitting() -> None:
    sched = ProgramScheduler(PolicyConfig(self_check=False, cost_aware=True))
    sched.add_backend("b", 5000, 0.0)
    feed(sched, prefill_s=0.01, tool_s=30.0)
    assert lambda_eff(sched) > 1.2
    restored = [
        any(isinstance(d, Restore) for d in sched.on_request(f"p{i}", 1e4, 0, 1100))
        for i in range(5)
    ]
    assert restored == [True, True, True, True, False]  # 5 x 1,150 in flight > 5,000


def test_published_policy_never_overcommits_however_cheap() -> None:
    sched = ProgramScheduler(PolicyConfig(self_check=False, cost_aware=False))
    sched.add_backend("b", 5000, 0.0)
    feed(sched, prefill_s=0.01, tool_s=30.0)
    assert lambda_eff(sched) == 1.0


def test_nothing_learned_means_published_limits() -> None:
    sched = ProgramScheduler(PolicyConfig(self_check=False, cost_aware=True))
    sched.add_backend("b", 5000, 0.0)
    sched.tick(1.0)
    assert lambda_eff(sched) == 1.0


def test_decay_half_life_follows_the_learned_tool_time() -> None:
    sched = ProgramScheduler(
        PolicyConfig(self_check=False, cost_aware=True, decay_tool_halflives=1.0))
    sched.add_backend("b", 1_000_000, 0.0)
    feed(sched, prefill_s=0.5, tool_s=4.0, n=10)
    sched.on_request("x", 1000.0, 0, 1000)
    sched.on_request_done("x", 1001.0, Usage(1000, 0, 0), None)
    _, tool_s = sched.learned_step_shape
    view = next(iter(sched.backend_views(1001.0 + tool_s)))
    # one learned tool time later an acting program still counts half (published x = 2:
    # 2^-4 = 6 %)
    assert view.acting_demand == pytest.approx(500, rel=0.05)


def test_cost_aware_holds_the_arrival_instead_of_marking_in_flight_programs() -> None:
    rt = RuntimeModel(ProgramScheduler(PolicyConfig(self_check=False, cost_aware=True)))
    rt.add_backend("b", 1000, 0.0)
    rt.request("small", 0.0, 300)
    rt.request("big", 0.0, 500)
    rt.done("big", 1.0, Usage(490, 10, 0))
    # big comes back larger: 300 (in flight) + 800 > 1000. Published: mark `small` (it frees
    # nothing until its call ends); cost-aware: big's request waits at the gate instead
    assert rt.request("big", 1.0, 800) == [Pause("big", "b")]
    assert rt.programs["big"].gate == 1
    assert rt.done("small", 2.0, Usage(300, 0, 0)) == []  # 300 + 810 still > 1000
    assert rt.tick(3.0) == [Restore("big", "b")]  # small's share decays: 150 + 810 fits
    assert rt.programs["big"].upstream == 1


def test_published_marks_in_flight_program_for_the_same_arrival() -> None:
    rt = RuntimeModel(ProgramScheduler(PolicyConfig(self_check=False, cost_aware=False)))
    rt.add_backend("b", 1000, 0.0)
    rt.request("small", 0.0, 300)
    rt.request("big", 0.0, 500)
    rt.done("big", 1.0, Usage(490, 10, 0))
    assert rt.request("big", 1.0, 800) == [MarkForPause("small", "b"), Admit("big", "b")]


def test_cost_aware_starving_program_goes_first_without_forcing() -> None:
    rt = RuntimeModel(ProgramScheduler(
        PolicyConfig(self_check=False, cost_aware=True, starvation_bound_s=10.0)))
    rt.add_backend("b", 1000, 0.0)
    rt.request("r1", 0.0, 500)
    rt.request("r2", 0.0, 500)
    rt.request("late", 1.0, 400)
    rt.request("small", 2.0, 10)
    decisions = rt.tick(11.5)
    assert not any(isinstance(d, MarkForPause) for d in decisions)  # no forced overcommit
    assert rt.scheduler.restore_order(2) == ["late", "small"]  # late first despite its c
    rt.done("r1", 12.0, Usage(500, 0, 0))
    decisions = rt.release("r1", 12.0)
    assert decisions[0] == Restore("late", "b")


def test_cost_aware_reserves_the_learned_output_for_reasoning_programs() -> None:
    sched = ProgramScheduler(PolicyConfig(self_check=False, cost_aware=True))
    sched.add_backend("b", 100_000, 0.0)
    sched.on_request("a", 0.0, 0, 1000)
    sched.on_request_done("a", 1.0, Usage(1000, 300, 0), None)
    sched.on_request("b", 1.0, 0, 2000)
    view = next(iter(sched.backend_views(1.0)))
    assert view.reasoning_demand == pytest.approx(2000 + 300)
