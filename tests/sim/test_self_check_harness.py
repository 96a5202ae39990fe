"""The sidecar's default scheduler in the virtual-time harness, where the gate loses and wins.

The same seeded fleet runs three ways: plain vLLM, the gate alone (``thunder-gate``) and the
default (``thunder``: the gate with its self-check). Each point is chosen so that the gate
alone is clearly on one side of plain vLLM; the default must then follow the winner.
"""

from __future__ import annotations

from thunder_middleware.policy.self_check import GateMode
from thunder_middleware.sim.engines import EngineSpec
from thunder_middleware.sim.harness import HarnessConfig, run_simulation
from thunder_middleware.sim.routing import ThunderPolicy, make_policy
from thunder_middleware.sim.workloads import workload


def _run(name: str, wl: str, programs: int, steps: int, blocks: int | None) -> tuple[float, object]:
    policy = make_policy(name)
    config = HarnessConfig(concurrency=programs, steps_per_program=steps,
                           engine=EngineSpec(num_blocks=blocks))
    return run_simulation(workload(wl, 0), policy, config).steps_per_min, policy


def test_where_gating_loses_the_default_falls_back_to_pass_through() -> None:
    """Router-like agents (tools of seconds to minutes) on a quarter-size KV: holding them
    at the gate costs more than the re-prefill it saves."""
    plain, _ = _run("vllm", "router", 48, 20, 4096)
    gate, _ = _run("thunder-gate", "router", 48, 20, 4096)
    ours, policy = _run("thunder", "router", 48, 20, 4096)
    assert gate < 0.95 * plain, "the point must be one where the gate alone loses"
    assert ours >= 0.98 * plain, (ours / plain, gate / plain)
    assert isinstance(policy, ThunderPolicy)
    assert policy.scheduler.gating.epochs > 10, "the check must have been measuring"


def test_where_gating_pays_the_default_keeps_most_of_it() -> None:
    """SWE-agent-like agents, 48 of them on one H100 + Qwen3-8B: the fleet outgrows the KV
    and plain vLLM re-prefills; the gate keeps the resident programs' caches. The check
    starts in pass-through and must find that out first, which costs part of the gain in a
    run of 30 steps per slot (about 40 minutes of agent time)."""
    plain, _ = _run("vllm", "swe-agent", 48, 30, None)
    gate, _ = _run("thunder-gate", "swe-agent", 48, 30, None)
    ours, policy = _run("thunder", "swe-agent", 48, 30, None)
    assert gate > 1.2 * plain, "the point must be one where the gate alone wins"
    assert ours > 1.1 * plain, (ours / plain, gate / plain)
    assert isinstance(policy, ThunderPolicy)
    assert policy.scheduler.gating.main is GateMode.GATE
    assert policy.scheduler.gating.estimated_gain is not None
    assert policy.scheduler.gating.estimated_gain > 1.0
