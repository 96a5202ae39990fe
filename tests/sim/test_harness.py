"""The virtual-time harness on a small, thrashing configuration (each run well under a second)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from thunder_middleware.sim.engines import EngineSpec
from thunder_middleware.sim.harness import HarnessConfig, run_simulation
from thunder_middleware.sim.metrics import RunResult
from thunder_middleware.sim.routing import POLICIES, make_policy
from thunder_middleware.sim.trace import Trace
from thunder_middleware.sim.workloads import (
    Clipped,
    ToolShape,
    Workload,
    WorkloadShape,
    workload,
)

TINY = WorkloadShape(
    name="tiny",
    system_prompt_tokens=(256, 320),
    task_tokens=Clipped(40, 120, 80, 0.3),
    steps=(6, 10),
    output_tokens=Clipped(16, 48, 32, 0.3),
    tools=(ToolShape("bash", 1.0, Clipped(0.5, 4.0, 1.5, 0.6), Clipped(40, 300, 120, 0.6)),),
    setup_s=(2.0, 4.0),
    disk_gb=(0.1, 0.2),
    context_limit=1_600,
)
SMALL_KV = EngineSpec(num_blocks=256, block_size=16)  # 4,096 tokens: a few programs' worth


def simulate(policy: str, concurrency: int, *, replicas: int = 1, seed: int = 0,
             steps: int = 8, engine: EngineSpec = SMALL_KV) -> RunResult:
    config = HarnessConfig(concurrency=concurrency, steps_per_program=steps,
                           replicas=replicas, engine=engine)
    return run_simulation(Workload(TINY, seed), make_policy(policy), config)


def comparable(result: RunResult) -> dict[str, object]:
    row = result.row()
    row.pop("cpu_s")
    return row


def test_a_run_completes_the_step_budget_and_measures_what_it_ran() -> None:
    result = simulate("vllm", 4)
    assert result.steps == 4 * 8
    assert result.duration_s > 0 and result.steps_per_min == pytest.approx(
        60 * result.steps / result.duration_s)
    assert 0.0 < result.hit_rate < 1.0
    assert result.mean_step_latency_s > 1.0  # at least a tool call each
    assert result.p90_step_latency_s >= result.mean_step_latency_s * 0.8
    assert result.env_wait_s > 0  # plain vLLM creates environments on first use
    assert result.engine_steps > 0 and result.kv_times


def test_same_seed_same_result_other_seed_other_result() -> None:
    first, again = simulate("vllm", 12, seed=5), simulate("vllm", 12, seed=5)
    assert comparable(first) == comparable(again)
    assert first.kv_series == again.kv_series
    assert comparable(simulate("vllm", 12, seed=6)) != comparable(first)


def test_a_trace_replays_exactly_like_its_workload() -> None:
    source = Workload(TINY, 2)
    trace = Trace.from_workload(source, 40)
    config = HarnessConfig(concurrency=6, steps_per_program=6, engine=SMALL_KV)
    from_workload = run_simulation(source, make_policy("vllm"), config)
    from_trace = run_simulation(trace, make_policy("vllm"), config)
    assert comparable(from_trace) == comparable(from_workload)


def test_plain_vllm_hit_rate_falls_as_programs_outgrow_the_cache() -> None:
    few, many = simulate("vllm", 2), simulate("vllm", 24)
    assert few.preemptions <= many.preemptions
    assert few.hit_rate > 0.7
    assert many.hit_rate < few.hit_rate - 0.2


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_ceiling_is_at_least_every_policy(replicas: int) -> None:
    ceiling = simulate("ceiling", 24, replicas=replicas)
    assert ceiling.preemptions == 0
    for policy in POLICIES:
        if policy == "ceiling":
            continue
        result = simulate(policy, 24, replicas=replicas)
        assert result.steps_per_min <= ceiling.steps_per_min * 1.001, policy
        assert result.hit_rate <= ceiling.hit_rate + 1e-9, policy


def test_session_affinity_and_round_robin_spread_programs_over_replicas() -> None:
    for policy in ("session-affinity", "round-robin", "least-loaded", "vllm"):
        result = simulate(policy, 8, replicas=2)
        used = [max(series) for series in result.kv_series.values()]
        assert len(used) == 2 and min(used) > 0, policy


def test_ttl_pinning_keeps_acting_programs_cached_when_memory_allows() -> None:
    roomy = replace(SMALL_KV, num_blocks=1024)
    plain, pinned = simulate("vllm", 10, engine=roomy), simulate("ttl-pinning", 10, engine=roomy)
    assert pinned.hit_rate >= plain.hit_rate


@pytest.mark.parametrize("policy", ["thunder", "thunder-published"])
def test_thunder_beats_plain_vllm_under_thrashing(policy: str) -> None:
    """SWE-agent-like contexts on a cache a few programs large: recompute is expensive."""
    config = HarnessConfig(concurrency=16, steps_per_program=10,
                           engine=EngineSpec(num_blocks=2_500))
    source = workload("swe-agent", 0)
    plain = run_simulation(source, make_policy("vllm"), config)
    thunder = run_simulation(source, make_policy(policy), config)
    assert thunder.hit_rate > plain.hit_rate + 0.03
    assert thunder.preemptions < plain.preemptions
    assert thunder.steps_per_min > plain.steps_per_min
    assert thunder.pauses > 0 and thunder.restores > 0
    assert thunder.env_wait_s < plain.env_wait_s  # environments prepared at registration
