"""The twin and real vLLM, given the same small trace and the same cache geometry, report the
same prefix-cache hits (``usage.prompt_tokens_details.cached_tokens``) request by request.

Tolerances: total cached tokens within 5 %, the project's agreement goal (issue 2); at least
75 % of requests exactly equal; a mean difference of at most one block per request. Why so
loose per request: on the 16-program trace vLLM agrees with *itself* on about 98.6 % of
requests (timing inside a wave moves a decode block allocation before or after a later
arrival's lookup), and on 28 requests one differing request is 3.6 %. The twin's block pool
now frees never-full blocks to the front of the free queue as vLLM 0.32 does (it once put
them at the tail, which cost a few requests one to three blocks each); on the 16-program
trace the twin is within 0.07 % of vLLM (benchmarks/results/vllm_vs_twin.md). A twin with
6 % fewer blocks than vLLM fails this test (-6.1 %, mean 4.3 blocks). The trace is built
to stay below preemption: preemption order is compared in the twin's own unit tests, not
against vLLM.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import replace

import httpx
import pytest

from benchmarks.vllm_twin_replay import (
    SMALL_TRACE,
    HttpEngine,
    build_trace,
    compare,
    replay_core,
    replay_http,
)
from benchmarks.vllm_vs_twin import EngineLimits
from thunder_middleware.launch import RunningServer
from thunder_middleware.twin import EngineCore, EngineRequest

pytestmark = pytest.mark.vllm

TOTAL_TOLERANCE = 0.05
MIN_FRACTION_EQUAL = 0.75
MAX_MEAN_ABS_BLOCKS = 1.0
STAGGER_S = 0.05


async def test_twin_and_vllm_agree_on_cached_tokens(
    vllm_url: str, vllm_limits: EngineLimits, matched_twin: RunningServer
) -> None:
    trace = build_trace(replace(SMALL_TRACE, salt=uuid.uuid4().hex), vllm_limits.num_blocks,
                        vllm_limits.block_size)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        vllm = HttpEngine("vLLM", vllm_url, client)
        twin = HttpEngine("twin", matched_twin.url, client)
        await vllm.connect()
        await twin.connect()
        real = await replay_http(vllm, trace, returned_outputs=False, stagger_s=STAGGER_S)
        served = await replay_http(twin, trace, returned_outputs=False, stagger_s=STAGGER_S)

    real_cached = sum(r.cached_tokens for r in real.records)
    unbounded = replay_core(trace, replace(vllm_limits.core_config(), num_blocks=100_000),
                            returned_outputs=False)
    no_eviction = sum(r.cached_tokens for r in unbounded.records)
    # the trace must hit and must evict, or agreement would prove little
    assert 0 < real_cached < no_eviction, (real_cached, no_eviction)
    assert real.counters.preemptions == 0 and served.counters.preemptions == 0

    agreement = compare(real.records, served.records, vllm_limits.block_size)
    differing = [(a.wave, a.program, a.turn, a.cached_tokens, b.cached_tokens)
                 for a, b in agreement.differing]
    detail = (f"vLLM {agreement.reference_cached} vs twin {agreement.other_cached} cached "
              f"tokens; differing (wave, program, turn, vLLM, twin): {differing}")
    assert abs(agreement.relative_difference) <= TOTAL_TOLERANCE, detail
    assert agreement.fraction_equal >= MIN_FRACTION_EQUAL, detail
    assert agreement.mean_abs_blocks <= MAX_MEAN_ABS_BLOCKS, detail

    # both engines' /metrics counters say what their usage fields said
    for result in (real, served):
        assert result.counters.hits == sum(r.cached_tokens for r in result.records), result.engine
        assert result.counters.queries == sum(r.prompt_tokens for r in result.records)


@pytest.mark.parametrize("output_tokens", [40, 24])
async def test_blocks_filled_by_generated_tokens_hit_as_in_vllm(
    vllm_url: str, vllm_limits: EngineLimits, output_tokens: int
) -> None:
    """A reply that fills a block makes that block hit on the next turn, except the block the
    last sampled token would complete: that token never had KV computed. With a 1000-token
    prompt and 32-token blocks, 40 replies give 1040 tokens (hit 1024 next turn), 24 give
    exactly 1024 (hit only 992). The twin's HTTP server does not return generated ids, so its
    engine core stands in for it here."""
    rng = random.Random(uuid.uuid4().hex)  # fresh ids: nothing of an earlier run can hit
    prompt = [rng.randrange(16, 4000) for _ in range(1000)]
    observation = list(range(100, 164))
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0)) as client:
        vllm = HttpEngine("vLLM", vllm_url, client)
        await vllm.connect()
        first = await vllm.complete(prompt, output_tokens)
        assert first.output_ids is not None
        second = await vllm.complete(prompt + first.output_ids + observation, 4)

    core = EngineCore(vllm_limits.core_config())
    core.add_request(EngineRequest("first", prompt, output_tokens))
    generated: list[int] = []
    while core.has_unfinished_requests():
        generated += [t for out in core.step().outputs for t in out.new_token_ids]
    core.add_request(EngineRequest("second", prompt + generated + observation, 4))
    cached = [out.num_cached_tokens for out in core.step().outputs]

    block = vllm_limits.block_size
    expected = (len(prompt) + output_tokens - 1) // block * block
    assert second.cached_tokens == expected
    assert cached == [expected]
