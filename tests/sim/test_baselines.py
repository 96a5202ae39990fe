"""The baseline policies do what DESIGN.md section 7 says they do, checked on their own state.

TTL pinning learns each tool's mean duration, least-loaded routing picks the least busy
replica, and the ceiling neither preempts nor loses on cache hits at a thrashing point.
"""

from __future__ import annotations

import statistics

import pytest

from thunder_middleware.policy.types import Admit
from thunder_middleware.sim.engines import EngineSpec
from thunder_middleware.sim.harness import Harness, HarnessConfig, run_simulation
from thunder_middleware.sim.routing import (
    POLICIES,
    BackendSnapshot,
    LeastLoadedRouting,
    TTLPinning,
    make_policy,
)
from thunder_middleware.sim.trace import Trace
from thunder_middleware.sim.workloads import ProgramSpec, StepSpec, workload

# --- TTL pinning ---------------------------------------------------------------------------


def test_ttl_pinning_ttl_is_the_running_mean_of_each_tool() -> None:
    policy = TTLPinning()
    assert policy.retain_ttl_s("bash") == policy.default_ttl_s  # never seen: the default
    policy.on_tool_done("bash", 1.0)
    assert policy.retain_ttl_s("bash") == pytest.approx(1.0)
    policy.on_tool_done("bash", 2.0)
    policy.on_tool_done("bash", 6.0)  # mean 3, median 2, last 6, max 6: only the mean is 3
    policy.on_tool_done("edit", 0.25)
    assert policy.retain_ttl_s("bash") == pytest.approx(3.0)
    assert policy.retain_ttl_s("edit") == pytest.approx(0.25)  # tools are learned apart
    assert policy.retain_ttl_s("run_tests") == policy.default_ttl_s
    assert policy.retains_blocks("any-program")


def _program(index: int, tools: list[tuple[str, float]]) -> ProgramSpec:
    base = 2_000 + 1_000 * index
    return ProgramSpec(
        program_id=f"hand-{index}",
        workload="hand",
        task=tuple(range(base, base + 40)),
        steps=tuple(
            StepSpec(16, tool, duration, tuple(range(base + 100 * (k + 1), base + 100 * (k + 1)
                                                     + 30)))
            for k, (tool, duration) in enumerate(tools)
        ),
        setup_s=1.0,
        disk_gb=0.1,
    )


def test_ttl_pinning_learns_the_observed_tool_means_in_a_run() -> None:
    """Every step of a finite trace runs, so the learned TTL is the mean over the trace."""
    programs = (
        _program(0, [("bash", 1.0), ("edit", 0.5), ("bash", 7.0)]),
        _program(1, [("edit", 1.5), ("bash", 2.0), ("bash", 2.0)]),
        _program(2, [("bash", 0.6), ("test", 9.0), ("edit", 4.0)]),
        _program(3, [("bash", 3.0), ("edit", 0.5), ("test", 3.0)]),
    )
    trace = Trace("hand", tuple(range(1_000, 1_064)), programs)
    policy = TTLPinning()
    config = HarnessConfig(concurrency=2, steps_per_program=6,  # budget = the trace's 12 steps
                           engine=EngineSpec(num_blocks=256, block_size=16))
    result = run_simulation(trace, policy, config)
    assert result.steps == 12 and result.programs_finished == 3  # the last one ends the run
    for tool in ("bash", "edit", "test"):
        durations = [s.tool_duration_s for p in programs for s in p.steps if s.tool == tool]
        assert policy.retain_ttl_s(tool) == pytest.approx(statistics.fmean(durations)), tool


# --- least-loaded routing ------------------------------------------------------------------


def snap(name: str, running: int, waiting: int = 0, kv: float = 0.0) -> BackendSnapshot:
    return BackendSnapshot(name, capacity_tokens=100_000, kv_usage=kv, num_running=running,
                           num_waiting=waiting)


@pytest.mark.parametrize(
    ("backends", "expected"),
    [
        # the fewest requests wins even with the fullest cache
        ([snap("a", 3, kv=0.1), snap("b", 2, kv=0.2), snap("c", 1, kv=0.95)], "c"),
        # waiting requests count as load: 1 running + 2 waiting is busier than 2 running
        ([snap("a", 1, 2), snap("b", 2, 0), snap("c", 4, 0)], "b"),
        # equal request counts: the least KV in use breaks the tie
        ([snap("a", 2, kv=0.6), snap("b", 1, 1, kv=0.3), snap("c", 2, kv=0.4)], "b"),
        ([snap("a", 2, kv=0.3), snap("b", 1, 1, kv=0.6), snap("c", 0, 3, kv=0.5)], "a"),
        # a replica with nothing at all beats any busy one
        ([snap("a", 1), snap("b", 0), snap("c", 0, 1)], "b"),
    ],
)
def test_least_loaded_picks_the_fewest_requests_then_the_least_kv(
    backends: list[BackendSnapshot], expected: str
) -> None:
    policy = LeastLoadedRouting()
    policy.start(backends, 0.0)
    assert policy.on_request("new-program", 0.0, 1_000, backends) == [Admit("new-program",
                                                                            expected)]
    # the same answer whatever order the replicas are listed in
    assert policy.route("new-program", list(reversed(backends))) == expected


def test_least_loaded_full_tie_is_deterministic_and_routing_is_per_request() -> None:
    tied = [snap("a", 1, 1, kv=0.5), snap("b", 2, 0, kv=0.5)]
    policy = LeastLoadedRouting()
    policy.start(tied, 0.0)
    assert policy.route("p", tied) == "a"  # a full tie goes to the first listed replica
    assert policy.route("p", tied) == "a"  # ... every time
    assert policy.route("p", list(reversed(tied))) == "b"
    # no stickiness: the same program's next call follows the load
    assert policy.route("p", [snap("a", 5), snap("b", 0)]) == "b"
    assert policy.route("p", [snap("a", 0), snap("b", 5)]) == "a"


def test_least_loaded_keeps_replicas_evenly_busy_in_a_run() -> None:
    config = HarnessConfig(concurrency=8, steps_per_program=6, replicas=2,
                           engine=EngineSpec(num_blocks=2_000))
    source = workload("router", 1)
    balanced = run_simulation(source, make_policy("least-loaded"), config)
    pinned = run_simulation(source, make_policy("session-affinity"), config)
    assert balanced.steps == pinned.steps == 48
    assert balanced.mean_imbalance < pinned.mean_imbalance


# --- the ceiling ---------------------------------------------------------------------------

# 24k tokens per replica for 8 SWE-agent-like programs each: most policies preempt here
THRASHING = HarnessConfig(concurrency=16, steps_per_program=5, replicas=2,
                          engine=EngineSpec(num_blocks=1_500))


def test_the_ceiling_sizes_replicas_for_every_program_at_once() -> None:
    source = workload("swe-agent", 0)
    peak = max(p.context_tokens(len(source.system_prompt)) for p in source.programs(32))
    ceiling = Harness(source, make_policy("ceiling"), THRASHING)
    plain = Harness(source, make_policy("vllm"), THRASHING)
    assert set(plain.capacity.values()) == {1_500 * 16}
    assert all(c >= THRASHING.concurrency * peak for c in ceiling.capacity.values())


def test_the_ceiling_never_preempts_and_has_the_best_hit_rate_where_others_thrash() -> None:
    source = workload("swe-agent", 0)
    results = {name: run_simulation(source, make_policy(name), THRASHING) for name in POLICIES}
    ceiling = results.pop("ceiling")
    assert ceiling.preemptions == 0 and ceiling.steps == 80
    assert sum(r.preemptions > 0 for r in results.values()) >= 3  # the point does thrash
    for name, result in results.items():
        assert result.steps == ceiling.steps, name
        assert result.hit_rate <= ceiling.hit_rate + 1e-9, (name, result.hit_rate,
                                                             ceiling.hit_rate)
