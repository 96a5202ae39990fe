"""The live harness drives real servers: a twin directly, and the sidecar in front of one."""

from __future__ import annotations

import httpx

from thunder_middleware.launch import running, start_sidecar, start_twin
from thunder_middleware.sim.engines import EngineSpec
from thunder_middleware.sim.harness import HarnessConfig, run_simulation
from thunder_middleware.sim.live import LiveConfig, run_live
from thunder_middleware.sim.routing import make_policy
from thunder_middleware.sim.workloads import workload

SCALE = 20.0
BLOCKS = 2_000


def test_live_run_against_a_twin_completes_and_matches_the_simulator() -> None:
    source = workload("router", seed=3)
    twin = start_twin(time_scale=SCALE, num_gpu_blocks=BLOCKS, block_size=16)
    with running(twin):
        config = LiveConfig(target_url=twin.url, engine_urls=[twin.url], concurrency=4,
                            steps_per_program=3, time_scale=SCALE)
        live = run_live(source, config)
        metrics = httpx.get(f"{twin.url}/metrics").text
    assert live.steps == 12
    assert live.kv_times and max(live.kv_series["replica-0"]) > 0
    assert 0.0 < live.hit_rate < 1.0  # system prompt shared, observations not
    assert "vllm:prefix_cache_hits_total" in metrics
    virtual = run_simulation(
        source, make_policy("vllm"),
        HarnessConfig(concurrency=4, steps_per_program=3,
                      engine=EngineSpec(num_blocks=BLOCKS), engine_echoes_replies=False),
    )
    # same prompts, same engine: cache hits agree closely; time within a loose band (the
    # live run shares two cores with everything else)
    assert abs(live.hit_rate - virtual.hit_rate) < 0.05
    assert 0.6 < live.steps_per_min / virtual.steps_per_min < 1.4


def test_live_run_through_the_sidecar_releases_its_programs() -> None:
    source = workload("router", seed=4)
    twin = start_twin(time_scale=SCALE, num_gpu_blocks=BLOCKS, block_size=16)
    with running(twin):
        sidecar = start_sidecar(
            [twin.url], extra_args=["--time-scale", str(SCALE), "--env-provider", "none"]
        )
        with running(sidecar):
            config = LiveConfig(target_url=sidecar.url, engine_urls=[twin.url],
                                concurrency=3, steps_per_program=15, time_scale=SCALE,
                                policy="thunder", through_sidecar=True)
            live = run_live(source, config)
            programs = httpx.get(f"{sidecar.url}/programs").json()
    assert live.steps == 45
    assert live.programs_finished >= 1  # router programs have 5-15 steps
    assert live.hit_rate > 0.3
    listed = programs["data"]
    alive = [p for p in listed if p.get("status") != "terminated"]
    # every finished program was released: only the ones cut by the step budget remain
    assert len(alive) <= config.concurrency, alive
