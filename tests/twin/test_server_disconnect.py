"""A client that goes away aborts its request and frees its KV blocks, streaming or not."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest

from thunder_middleware.launch import RunningServer, start_twin

from .scrape import value, wait_until

LONG = {"max_tokens": 20_000, "min_tokens": 20_000, "ignore_eos": True}


@pytest.fixture(scope="module")
def slow_twin() -> Iterator[RunningServer]:
    """Real time (scale 1): a 20k-token reply takes minutes, so only an abort ends it."""
    server = start_twin(time_scale=1.0, num_gpu_blocks=4096)
    try:
        yield server
    finally:
        server.stop()


def _busy(url: str) -> bool:
    return value(url, "vllm:num_requests_running") == 1 and (
        value(url, "vllm:kv_cache_usage_perc") > 0
    )


def _idle(url: str) -> bool:
    return value(url, "vllm:num_requests_running") == 0 and (
        value(url, "vllm:kv_cache_usage_perc") == 0
    )


def test_closing_a_stream_aborts_the_request(slow_twin: RunningServer) -> None:
    url = slow_twin.url
    body = {"messages": [{"role": "user", "content": "stream forever " * 50}], "stream": True}
    generated_before = value(url, "vllm:generation_tokens_total")
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={**body, **LONG}, timeout=30
    ) as response:
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(12), strict=False) if line]
        assert len(received) >= 5
        assert _busy(url), "the request should hold blocks while it streams"
    assert wait_until(lambda: _idle(url)), "blocks were not freed after the client left"
    generated = value(url, "vllm:generation_tokens_total") - generated_before
    assert generated < 20_000
    assert httpx.get(url + "/twin/stats").json()["num_requests_aborted"] >= 1


def test_a_non_streaming_client_that_times_out_aborts_the_request(slow_twin: RunningServer) -> None:
    url = slow_twin.url
    aborted_before = httpx.get(url + "/twin/stats").json()["num_requests_aborted"]
    body = {"messages": [{"role": "user", "content": "think hard " * 80}], **LONG}
    with contextlib.suppress(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=1.5))
        pytest.fail("a 20k-token reply at time scale 1 cannot finish in 1.5 s")
    assert wait_until(lambda: _idle(url)), "blocks were not freed after the client left"
    assert httpx.get(url + "/twin/stats").json()["num_requests_aborted"] == aborted_before + 1
    # the twin keeps serving
    ok = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30)
    assert ok.status_code == 200


def test_a_completions_stream_closed_early_aborts_every_prompt(slow_twin: RunningServer) -> None:
    url = slow_twin.url
    body = {"prompt": ["first " * 40, "second " * 40], "stream": True, **LONG}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert sum(1 for line, _ in zip(lines, range(10), strict=False) if line) >= 3
        assert value(url, "vllm:num_requests_running") == 2
    assert wait_until(lambda: _idle(url))
