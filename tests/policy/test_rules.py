"""One test per rule of DESIGN section 3, with a fake clock (plain floats).

All tests here run the published policy (cost_aware=False) unless they say otherwise, so
each expected decision follows from the brief's text alone.
"""

from __future__ import annotations

import pytest

from thunder_middleware.policy import (
    Admit,
    CallTiming,
    Expire,
    MarkForPause,
    Pause,
    PolicyConfig,
    ProgramScheduler,
    Restore,
    Status,
    Usage,
)

from .runtime_model import RuntimeModel


def published(**overrides: float) -> RuntimeModel:
    config = PolicyConfig.model_validate({"cost_aware": False, "self_check": False, **overrides})
    return RuntimeModel(ProgramScheduler(config))


def usage(total: int) -> Usage:
    return Usage(prompt_tokens=total - 10, completion_tokens=10)


def demand(rt: RuntimeModel, backend: str, now: float) -> float:
    return next(b.demand for b in rt.scheduler.backend_views(now) if b.name == backend)


def test_config_rejects_inverted_watermarks() -> None:
    with pytest.raises(ValueError, match="lambda_min"):
        PolicyConfig(self_check=False, lambda_min=1.2, lambda_max=1.0)


def test_demand_is_reasoning_c_plus_decayed_acting_c() -> None:
    rt = published()
    rt.add_backend("b", 10_000, 0.0)
    rt.request("r", 0.0, 1000)
    rt.request("a", 0.0, 2000)
    rt.done("a", 1.0, usage(2000))  # acting since t = 1
    assert demand(rt, "b", 1.0) == pytest.approx(1000 + 2000)
    assert demand(rt, "b", 3.0) == pytest.approx(1000 + 2000 * 2.0**-2)
    assert demand(rt, "b", 11.0) == pytest.approx(1000 + 2000 * 2.0**-10)


def test_new_program_admitted_directly_to_backend_with_most_room() -> None:
    rt = published()
    rt.add_backend("small", 1000, 0.0)
    rt.add_backend("large", 5000, 0.0)
    assert rt.request("p", 0.0, 500) == [Restore("p", "large")]


def test_active_program_request_is_admitted_on_its_backend() -> None:
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    rt.request("p", 0.0, 100)
    rt.done("p", 1.0, usage(150))
    assert rt.request("p", 2.0, 200) == [Admit("p", "b")]
    view = rt.scheduler.program("p")
    assert view is not None and view.c == 200


def test_new_program_queues_behind_waiting_programs_even_with_room() -> None:
    """Fairness: a new program never jumps a paused program whose client is waiting."""
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    rt.request("x", 0.0, 600)
    rt.request("y", 0.0, 300)
    rt.done("x", 1.0, usage(600))
    assert rt.request("x", 1.0, 800) == [MarkForPause("y", "b"), Admit("x", "b")]
    assert rt.done("y", 2.0, usage(300)) == [Pause("y", "b")]
    assert rt.request("y", 2.5, 300) == []  # room is 200: y waits (class reasoning)
    assert rt.request("small", 2.6, 100) == []  # would fit, but y waits ahead of it
    assert rt.scheduler.restore_order(5) == ["y", "small"]


def test_new_programs_are_restored_smallest_first() -> None:
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    rt.request("big1", 0.0, 600)
    assert rt.request("big2", 0.0, 600) == []  # does not fit: queued
    assert rt.request("small", 0.1, 100) == [Restore("small", "b")]  # same class, smaller c


def test_pause_acting_before_reasoning_smallest_c_first() -> None:
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    for pid, c in [("a300", 300), ("a200", 200), ("r100", 100)]:
        rt.request(pid, 0.0, c)
    rt.done("a300", 0.5, usage(300))
    rt.done("a200", 0.5, usage(200))
    # r100 grows to 500: demand 500 + 300 + 200 = 1000 -> fits exactly
    assert rt.request("r100", 0.5, 100) == [Admit("r100", "b")]
    rt.done("r100", 0.5, usage(500))
    decisions = rt.request("r100", 0.5, 700)  # 700 + 300 + 200 = 1200: excess 200
    assert decisions == [Pause("a200", "b"), Admit("r100", "b")]


def test_smallest_acting_first_even_if_it_does_not_suffice_alone() -> None:
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    for pid, c in [("a100", 100), ("a400", 400), ("r", 400)]:
        rt.request(pid, 0.0, c)
    rt.done("a100", 0.0, usage(100))
    rt.done("a400", 0.0, usage(400))
    rt.done("r", 0.0, usage(400))
    # r returns with 800: 800 + 100 + 400 = 1300, excess 300: a100 (not enough), then a400
    assert rt.request("r", 0.0, 800) == [Pause("a100", "b"), Pause("a400", "b"), Admit("r", "b")]


def test_reasoning_program_is_marked_then_paused_at_completion() -> None:
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    rt.request("x", 0.0, 400)
    rt.request("y", 0.0, 300)
    rt.done("x", 1.0, usage(400))
    decisions = rt.request("x", 1.0, 800)  # 800 + 300 reasoning: excess, nobody acting
    assert decisions == [MarkForPause("y", "b"), Admit("x", "b")]
    view = rt.scheduler.program("y")
    assert view is not None and view.marked_for_pause and view.status is Status.ACTIVE
    assert Pause("y", "b") in rt.done("y", 2.0, usage(350))
    view = rt.scheduler.program("y")
    assert view is not None and view.status is Status.PAUSED


def test_marked_program_request_waits_until_restored() -> None:
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    rt.request("x", 0.0, 400)
    rt.request("y", 0.0, 300)
    rt.done("x", 1.0, usage(400))
    rt.request("x", 1.0, 800)  # marks y
    assert rt.request("y", 1.5, 350) == []  # a second call of y is held at the gate
    assert rt.done("y", 2.0, usage(350)) == [Pause("y", "b")]
    # x finishing and its context decaying makes room: y is restored with its held request
    rt.done("x", 3.0, usage(800))
    decisions = rt.tick(5.0)
    assert Restore("y", "b") in decisions
    assert rt.programs["y"].upstream == 1


def test_last_program_on_a_backend_is_never_paused() -> None:
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    assert rt.request("huge", 0.0, 5000) == [Restore("huge", "b")]  # an empty backend takes it
    rt.done("huge", 1.0, usage(5000))
    assert rt.request("huge", 1.5, 6000) == [Admit("huge", "b")]


def test_restore_class_order_in_queue() -> None:
    """Reasoning (bound before, request waiting) < new < acting, then smallest c."""
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    rt.request("hog", 0.0, 1000)
    # three paused programs, constructed via health: evacuation pauses acting programs
    rt.add_backend("c", 3000, 0.0)
    for pid, c in [("acting_small", 100), ("acting_big", 200), ("reason_big", 400)]:
        rt.request(pid, 0.0, c)
        rt.done(pid, 0.5, usage(c))
    rt.set_health("c", False, 1.0)  # all three paused (acting); b is full
    rt.request("reason_big", 1.1, 450)  # paused program with a waiting request
    rt.request("brand_new", 1.2, 150)
    assert rt.scheduler.restore_order(10) == [
        "reason_big",
        "brand_new",
        "acting_small",
        "acting_big",
    ]


def test_placement_is_best_fit_decreasing_over_all_backends() -> None:
    rt = published()
    rt.add_backend("b1", 1000, 0.0)
    rt.add_backend("b2", 1500, 0.0)
    rt.request("hog2", 0.0, 1500)  # most room: b2
    rt.request("hog1", 0.0, 1000)  # b1
    for pid, c in [("p600", 600), ("p300", 300), ("p200", 200)]:
        assert rt.request(pid, 0.0, c) == []
    assert rt.scheduler.restore_order(5) == ["p200", "p300", "p600"]
    rt.done("hog1", 1.0, usage(1000))
    rt.done("hog2", 1.0, usage(1500))
    # both hogs decay to nothing; one tick restores all three in one pass: largest first to
    # the roomiest backend (p600 -> b2 with 1500, p300 -> b1 with 1000 > 900, p200 -> b2)
    decisions = rt.tick(40.0)
    assert decisions == [Restore("p600", "b2"), Restore("p300", "b1"), Restore("p200", "b2")]


def test_hysteresis_no_restore_until_below_low_watermark() -> None:
    rt = published(lambda_min=0.5, lambda_max=1.0)
    rt.add_backend("b", 1000, 0.0)
    rt.request("a", 0.0, 600)
    rt.request("q", 0.0, 300)  # 900 <= 1000: admitted (demand 600 >= 500 low watermark?)
    assert rt.programs["q"].bound_to is None  # restore needs demand < lambda_min * C = 500
    rt.done("a", 1.0, usage(600))
    assert rt.programs["q"].bound_to is None  # acting counts fully at first: 600
    rt.tick(2.0)  # 600 * 2^-1 = 300 < 500: restore
    assert rt.programs["q"].bound_to == "b"


def test_starvation_bound_restores_regardless() -> None:
    rt = published(starvation_bound_s=10.0)
    rt.add_backend("b", 1000, 0.0)
    rt.request("r1", 0.0, 500)
    rt.request("r2", 0.0, 500)
    rt.request("late", 1.0, 400)
    assert rt.tick(5.0) == []
    decisions = rt.tick(11.5)  # late waited 10.5 s > 10 s
    assert Restore("late", "b") in decisions
    # to make room, a reasoning program is marked (nobody is acting); never 'late' itself
    assert any(isinstance(d, MarkForPause) for d in decisions)
    assert not any(d.program_id == "late" for d in decisions if isinstance(d, MarkForPause))


def test_token_estimate_uses_learned_chars_per_token() -> None:
    sched = ProgramScheduler(PolicyConfig(self_check=False, cost_aware=False))
    sched.add_backend("b", 100_000, 0.0)
    sched.on_request("p", 0.0, prompt_chars=4000)
    view = sched.program("p")
    assert view is not None and view.c == pytest.approx(1000)  # default 4 chars/token
    sched.on_request_done("p", 1.0, Usage(prompt_tokens=2000, completion_tokens=100), None)
    view = sched.program("p")
    assert view is not None and view.c == 2100  # usage replaces the estimate
    assert sched.learned_chars_per_token == pytest.approx(2.0)  # first sample replaces prior
    sched.on_request("q", 2.0, prompt_chars=4000)
    view = sched.program("q")
    assert view is not None and view.c == pytest.approx(2000)


def test_token_hint_wins_over_character_estimate() -> None:
    sched = ProgramScheduler(PolicyConfig(self_check=False, cost_aware=False))
    sched.add_backend("b", 100_000, 0.0)
    sched.on_request("p", 0.0, prompt_chars=4000, prompt_tokens_hint=123)
    view = sched.program("p")
    assert view is not None and view.c == 123


def test_shared_prefix_is_learned_from_first_calls_and_held_once() -> None:
    rt = published(sharing_alpha=1.0)
    rt.add_backend("b", 1200, 0.0)
    rt.request("p1", 0.0, 500)
    rt.request("p2", 0.0, 500)
    # p2's first call found 400 tokens cached: a prefix p1 left (the shared system prompt)
    rt.done("p2", 1.0, Usage(prompt_tokens=500, completion_tokens=0, cached_tokens=400))
    view = next(iter(rt.scheduler.backend_views(1.0)))
    assert view.shared_prefix_tokens == 400
    # one copy of the prefix + each program's own 100 tokens
    assert view.demand == pytest.approx(400 + 100 + 100)
    assert view.sharing_factor == pytest.approx(600 / 1000)
    # without the correction 1500 > 1200 would queue p3; with it 700 fits
    assert rt.request("p3", 1.0, 500) == [Restore("p3", "b")]


def test_later_calls_do_not_teach_the_prefix() -> None:
    """A program's own history is cached on its later calls: that is not a shared prefix."""
    rt = published(sharing_alpha=1.0)
    rt.add_backend("b", 10_000, 0.0)
    rt.request("p", 0.0, 500)
    rt.done("p", 1.0, Usage(prompt_tokens=500, completion_tokens=10, cached_tokens=0))
    rt.request("p", 2.0, 900)
    rt.done("p", 3.0, Usage(prompt_tokens=900, completion_tokens=10, cached_tokens=500))
    view = next(iter(rt.scheduler.backend_views(3.0)))
    assert view.shared_prefix_tokens == 0


def test_shared_prefix_correction_has_a_floor() -> None:
    rt = published(sharing_alpha=1.0, min_sharing_factor=0.5)
    rt.add_backend("b", 10_000, 0.0)
    rt.request("p1", 0.0, 1000)
    rt.request("p2", 0.0, 1000)
    rt.done("p2", 1.0, Usage(prompt_tokens=1000, completion_tokens=0, cached_tokens=1000))
    view = next(iter(rt.scheduler.backend_views(1.0)))
    assert view.demand == pytest.approx(0.5 * 2000)  # not 1000 + 0 + 0


def test_kv_usage_gauge_is_recorded_but_does_not_scale_demand() -> None:
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    rt.request("p1", 0.0, 500)
    rt.request("p2", 0.0, 500)
    rt.apply(rt.scheduler.update_backend("b", 0.5, kv_usage=0.1))
    view = next(iter(rt.scheduler.backend_views(0.5)))
    assert view.kv_usage == 0.1 and view.demand == 1000


def test_unhealthy_backend_is_evacuated_and_programs_restored_elsewhere() -> None:
    rt = published()
    rt.add_backend("b1", 2000, 0.0)
    rt.add_backend("b2", 1000, 0.0)
    rt.request("acting", 0.0, 300)
    rt.done("acting", 0.5, usage(300))
    rt.request("busy", 0.6, 300)
    assert rt.programs["acting"].bound_to == rt.programs["busy"].bound_to == "b1"
    decisions = rt.set_health("b1", False, 1.0)
    assert set(decisions[:2]) == {Pause("acting", "b1"), MarkForPause("busy", "b1")}
    assert decisions[2:] == [Restore("acting", "b2")]
    # a new program goes to the healthy one only, though b1 has more nominal room
    assert rt.request("new", 1.1, 100) == [Restore("new", "b2")]
    assert rt.done("busy", 2.0, usage(320)) == [Pause("busy", "b1"), Restore("busy", "b2")]


def test_backend_back_to_health_takes_programs_again() -> None:
    rt = published()
    rt.add_backend("b1", 1000, 0.0)
    rt.set_health("b1", False, 0.0)
    assert rt.request("p", 0.1, 100) == []  # no healthy backend: wait
    assert rt.set_health("b1", True, 1.0) == [Restore("p", "b1")]


def test_idle_expiry_after_timeout_without_requests() -> None:
    rt = published(idle_timeout_s=100.0)
    rt.add_backend("b", 1000, 0.0)
    rt.request("p", 0.0, 100)
    rt.request("busy", 0.0, 100)
    rt.done("p", 1.0, usage(100))
    assert rt.tick(100.5) == []
    decisions = rt.tick(101.5)
    assert decisions == [Expire("p")]
    assert rt.scheduler.program("p") is None
    assert rt.scheduler.program("busy") is not None  # in flight: never expired


def test_tool_activity_restarts_the_idle_clock_only() -> None:
    rt = published(idle_timeout_s=100.0)
    rt.add_backend("b", 1000, 0.0)
    rt.request("p", 0.0, 100)
    rt.done("p", 1.0, usage(100))
    acting_since = rt.scheduler.program("p").acting_since  # type: ignore[union-attr]
    assert rt.scheduler.on_activity("p", 90.0) == []  # a tool started (or ended) at t=90
    assert rt.tick(150.0) == []  # past 1 + 100, but only 60 s since the activity
    view = rt.scheduler.program("p")
    assert view is not None and view.acting_since == acting_since  # acting time untouched
    assert rt.tick(190.5) == [Expire("p")]  # silent 100 s after the activity
    assert rt.scheduler.on_activity("p", 200.0) == []  # unknown now: ignored
    assert rt.scheduler.on_activity("never-seen", 200.0) == []
    assert rt.scheduler.program("never-seen") is None


def test_abandoned_request_leaves_the_queue_cleanly() -> None:
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    rt.request("hog", 0.0, 1000)
    rt.request("w", 0.0, 500)
    assert rt.scheduler.restore_order(3) == ["w"]
    rt.abandon("w", 1.0)
    view = rt.scheduler.program("w")
    assert view is not None and view.waiting_requests == 0 and view.status is Status.PAUSED
    rt.tick(200.0)  # no starvation rescue for a program nobody waits on
    assert rt.programs["w"].bound_to is None or rt.programs["w"].upstream == 0


def test_release_frees_room_and_restores_next() -> None:
    rt = published()
    rt.add_backend("b", 1000, 0.0)
    rt.request("a", 0.0, 800)
    rt.request("b", 0.0, 800)
    assert rt.release("a", 1.0) == [Restore("b", "b")]
    assert rt.scheduler.program("a") is None


def test_unknown_backend_update_raises() -> None:
    sched = ProgramScheduler(PolicyConfig(self_check=False))
    with pytest.raises(KeyError):
        sched.update_backend("nope", 0.0, healthy=False)


def test_events_for_unknown_programs_are_ignored() -> None:
    sched = ProgramScheduler(PolicyConfig(self_check=False))
    assert sched.on_request_done("ghost", 0.0, None, None) == []
    assert sched.on_request_abandoned("ghost", 0.0) == []
    assert sched.on_release("ghost", 0.0) == []


def test_rates_are_learned_from_usage_and_timing() -> None:
    sched = ProgramScheduler(PolicyConfig(self_check=False, attention_context_tokens=1e12))
    sched.add_backend("b", 100_000, 0.0)
    for i in range(5):
        pid = f"p{i}"
        sched.on_request(pid, float(i), 0, 1000)
        # 1000 uncached tokens in 0.1 s, then 99 tokens in 0.99 s
        sched.on_request_done(pid, float(i) + 1, Usage(1000, 100, 0), CallTiming(0.0, 0.1, 1.09))
    view = next(iter(sched.backend_views(10.0)))
    assert view.prefill_rate == pytest.approx(10_000, rel=1e-6)
    assert view.decode_rate == pytest.approx(100, rel=1e-6)
