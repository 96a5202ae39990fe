"""Scaled real time: replies take (at least) their modeled time over the time scale, and a
large batch does not stall HTTP handling."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from thunder_middleware.launch import RunningServer, start_twin

from .scrape import value

SCALE = 10.0


@pytest.fixture(scope="module")
def scaled_twin() -> Iterator[RunningServer]:
    server = start_twin(time_scale=SCALE)
    try:
        yield server
    finally:
        server.stop()


def test_a_reply_takes_its_modeled_time_over_the_scale(scaled_twin: RunningServer) -> None:
    url = scaled_twin.url
    busy_before = httpx.get(url + "/twin/stats").json()["busy_time_s"]
    e2e_before = value(url, "vllm:e2e_request_latency_seconds_sum")
    body = {"prompt": "time me " * 300, "max_tokens": 300, "min_tokens": 300, "ignore_eos": True}
    started = time.monotonic()
    response = httpx.post(url + "/v1/completions", json=body, timeout=60)
    wall = time.monotonic() - started
    assert response.json()["usage"]["completion_tokens"] == 300
    busy = httpx.get(url + "/twin/stats").json()["busy_time_s"] - busy_before
    e2e = value(url, "vllm:e2e_request_latency_seconds_sum") - e2e_before
    # an 8B model on an H100 decodes a token in a few milliseconds
    assert 300 * 0.003 < busy < 300 * 0.05
    # histograms hold modeled seconds: the engine's busy time plus any modeled wait
    assert 0.99 * busy <= e2e <= 1.05 * wall * SCALE
    assert wall >= 0.95 * busy / SCALE  # never faster than the schedule
    assert wall < busy / SCALE + 10.0


def _probe_health(url: str, stop: threading.Event) -> float:
    """Probe /health until ``stop`` is set; the slowest probe's seconds.

    A thread with its own client, not a task beside the load: on the load's event loop a
    probe's reply would also wait behind the client's own handling of the batch's replies,
    which says nothing about the server.
    """
    worst = 0.0
    with httpx.Client(base_url=url, timeout=120) as client:
        while not stop.is_set():
            probe = time.monotonic()
            assert client.get("/health").status_code == 200
            worst = max(worst, time.monotonic() - probe)
            stop.wait(0.02)
    return worst


async def _load(url: str, count: int) -> tuple[list[int], float, float]:
    """Run ``count`` concurrent chats while probing /health: (tokens, worst probe, wall)."""
    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(i: int) -> int:
            body = {
                "messages": [{"role": "user", "content": f"load {i} " * 20}],
                "max_tokens": 64,
                "min_tokens": 64,
                "ignore_eos": True,
            }
            response = await client.post("/v1/chat/completions", json=body)
            return int(response.json()["usage"]["completion_tokens"])

        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as prober:
            started = time.monotonic()
            probing = prober.submit(_probe_health, url, stop)
            try:
                tokens = await asyncio.gather(*(one(i) for i in range(count)))
            finally:
                stop.set()
            wall = time.monotonic() - started
            return list(tokens), probing.result(), wall


def test_a_large_batch_keeps_the_server_responsive(twin_server: RunningServer) -> None:
    """Were the engine stepped on the event loop, /health would wait for whole batches.
    The bound is relative to the batch's own wall time, so a loaded CPU does not matter."""
    tokens, worst_probe, wall = asyncio.run(_load(twin_server.url, 128))
    assert tokens == [64] * 128
    assert worst_probe < max(1.0, 0.5 * wall), (worst_probe, wall)
