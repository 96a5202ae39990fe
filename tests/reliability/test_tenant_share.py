"""Two tenants, one flooding: the other keeps its latency.

A small twin (4096 KV tokens) behind a sidecar with two tenants of equal weight. The victim
runs short calls one after the other; its median latency is measured on an idle system, then
while the flooder keeps 64 calls going at once (single calls with long outputs, each holding
its KV for a long time). Without a share the flooder's calls fill the engine's KV and its
queue, and the victim's calls wait behind them; with the share the flooder's calls in flight
hold at most half the KV, so the victim's stay within twice the idle figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.sidecar.conftest import STRICT_POLICY, chat_body, twin
from thunder_middleware.launch import RunningServer, start_sidecar
from thunder_middleware.security import hash_key, new_key

VICTIM, FLOODER = new_key(), new_key()
KEYS = f"victim:{hash_key(VICTIM)},flooder:{hash_key(FLOODER)}"
FLOOD_PROGRAMS = 64
VICTIM_CALLS = 8


@pytest.fixture(scope="module")
def small_twin() -> Iterator[RunningServer]:
    with twin(time_scale=5.0, num_gpu_blocks=256, block_size=16) as server:
        yield server


def _sidecar(small_twin: RunningServer, fair: bool) -> RunningServer:
    return start_sidecar([small_twin.url], extra_args=STRICT_POLICY, env={
        "THUNDER_API_KEYS": KEYS, "THUNDER_TENANT_FAIR_SHARE": str(fair).lower(),
        "THUNDER_TENANT_MAX_INFLIGHT": "16"})


def _twin_running(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError("vllm:num_requests_running")


async def _victim_median(client: httpx.AsyncClient, program_id: str) -> float:
    latencies = []
    for _ in range(VICTIM_CALLS):
        started = time.perf_counter()
        response = await client.post("/v1/chat/completions",
                                      json=chat_body(program_id, 60, max_tokens=64),
                                      headers={"Authorization": f"Bearer {VICTIM}"})
        assert response.status_code == 200, response.text
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


async def _flood(client: httpx.AsyncClient) -> None:
    async def caller(index: int) -> None:
        while True:
            response = await client.post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {FLOODER}"},
                json=chat_body(None, 300 + index, max_tokens=1024, salt=index))
            assert response.status_code == 200, response.text

    await asyncio.gather(*(caller(index) for index in range(FLOOD_PROGRAMS)))


async def _measure(url: str, twin_url: str) -> tuple[float, float, float]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        idle = await _victim_median(client, "victim-idle")
        flood = asyncio.create_task(_flood(client))
        await asyncio.sleep(3.0)  # the flood at full strength
        flooding = await asyncio.to_thread(_twin_running, twin_url)  # flooder calls at work
        loaded = await _victim_median(client, "victim-loaded")
        flood.cancel()  # the flooder's clients hang up, waiting or not
        with contextlib.suppress(asyncio.CancelledError):
            await flood
    return idle, loaded, flooding


def test_a_flooding_tenant_does_not_slow_the_other(small_twin: RunningServer) -> None:
    server = _sidecar(small_twin, fair=True)
    try:
        idle, loaded, flooding = asyncio.run(_measure(server.url, small_twin.url))
    finally:
        server.stop()
    print(f"\nfair share: victim median idle {idle * 1000:.0f} ms, under flood "
          f"{loaded * 1000:.0f} ms; flooder calls running in the engine {flooding:g}")
    assert flooding >= 1  # the flooder is served too, within its share
    assert loaded <= 2 * idle, (idle, loaded)


def test_in_flight_cap_per_tenant(small_twin: RunningServer) -> None:
    """With a cap of 2 calls in flight per tenant, six small concurrent calls of one tenant
    reach the engine two at a time, and all of them are served."""
    server = start_sidecar([small_twin.url], extra_args=STRICT_POLICY, env={
        "THUNDER_API_KEYS": KEYS, "THUNDER_TENANT_MAX_INFLIGHT": "2"})

    async def run() -> tuple[list[int], float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            calls = [asyncio.create_task(client.post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {FLOODER}"},
                json=chat_body(None, 20, max_tokens=300, salt=index))) for index in range(6)]
            peak = 0.0
            while not all(call.done() for call in calls):
                peak = max(peak, await asyncio.to_thread(_twin_running, small_twin.url))
                await asyncio.sleep(0.05)
            return [call.result().status_code for call in calls], peak

    try:
        statuses, peak = asyncio.run(run())
    finally:
        server.stop()
    assert statuses == [200] * 6
    assert 1 <= peak <= 2, peak
