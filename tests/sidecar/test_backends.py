"""Backend adapters and the pool without servers: engine endpoints faked with httpx.MockTransport.

SGLang texts follow SGLang's own collector (python/sglang/srt/metrics/collector.py) and its
"Production Metrics" page: ``sglang:`` names, a ``model_name`` label, ``cached_tokens_total``
split by ``cache_source``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from thunder_middleware.sidecar.backends.base import Backend, BackendMetrics, BackendUnavailable
from thunder_middleware.sidecar.backends.pool import BackendPool
from thunder_middleware.sidecar.backends.sglang import SGLangBackend
from thunder_middleware.sidecar.proxy import ErrorStreaks, _client_error, _json_error

URL = "http://sglang.test:30000"
LABEL = 'model_name="Qwen/Qwen3-8B"'

SGLANG_METRICS = f"""\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{{{LABEL}}} 3.0
# HELP sglang:num_used_tokens The number of used tokens.
# TYPE sglang:num_used_tokens gauge
sglang:num_used_tokens{{{LABEL}}} 45000.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{{{LABEL}}} 0.28
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{{{LABEL}}} 2.0
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{{{LABEL}}} 0.0075
# HELP sglang:max_total_num_tokens Maximum total number of tokens in the KV cache pool.
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{{{LABEL}}} 160000.0
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{{{LABEL}}} 8.128902e+06
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{{{LABEL}}} 7.557572e+06
# HELP sglang:cached_tokens_total Number of cached prompt tokens.
# TYPE sglang:cached_tokens_total counter
sglang:cached_tokens_total{{cache_source="device",{LABEL}}} 3.0e+06
sglang:cached_tokens_total{{cache_source="host",{LABEL}}} 1.0e+06
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_sum{{{LABEL}}} 12.5
sglang:time_to_first_token_seconds_bucket{{le="0.1",{LABEL}}} 4.0
sglang:time_to_first_token_seconds_bucket{{le="+Inf",{LABEL}}} 9.0
sglang:time_to_first_token_seconds_count{{{LABEL}}} 9.0
"""

WITHOUT_CAPACITY = "\n".join(line for line in SGLANG_METRICS.splitlines()
                             if "max_total_num_tokens" not in line) + "\n"


Routes = dict[str, Callable[[], httpx.Response]]


class FakeEngine:
    """Answers GETs from a route table that a test may change; counts the calls per path."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self.calls: dict[str, int] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls[path] = self.calls.get(path, 0) + 1
        answer = self.routes.get(path)
        return answer() if answer is not None else httpx.Response(404, json={"detail": "nf"})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


def text(body: str, status: int = 200) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(status, text=body)


def json(body: object, status: int = 200) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(status, json=body)


async def scrape(routes: Routes, capacity: int | None = None) -> tuple[BackendMetrics,
                                                                        FakeEngine]:
    engine = FakeEngine(routes)
    async with engine.client() as client:
        backend = SGLangBackend(URL, client, capacity_tokens=capacity)
        return await backend.scrape(), engine


async def test_sglang_metrics_from_the_collector_names() -> None:
    metrics, engine = await scrape({"/metrics": text(SGLANG_METRICS)})
    assert metrics.capacity_tokens == 160_000
    assert metrics.kv_usage == pytest.approx(0.28)
    assert (metrics.running, metrics.waiting) == (3.0, 2.0)
    assert metrics.prefix_cache_queries == pytest.approx(8.128902e6)
    assert metrics.prefix_cache_hits == pytest.approx(4.0e6)  # device + host
    assert metrics.prefix_hit_rate == pytest.approx(4.0e6 / 8.128902e6)
    assert metrics.preemptions is None  # SGLang has no counter with vLLM's meaning
    assert metrics.extra["cache_hit_rate"] == pytest.approx(0.0075)
    assert engine.calls == {"/metrics": 1}  # capacity in the text: no server-info call


async def test_sglang_without_cached_tokens_reports_no_hit_rate() -> None:
    older = "\n".join(line for line in SGLANG_METRICS.splitlines()
                      if "cached_tokens" not in line) + "\n"
    metrics, _ = await scrape({"/metrics": text(older)})
    assert metrics.prefix_cache_queries is None and metrics.prefix_cache_hits is None
    assert metrics.prefix_hit_rate is None


async def test_sglang_capacity_from_server_info_asked_once() -> None:
    engine = FakeEngine({"/metrics": text(WITHOUT_CAPACITY),
                         "/get_server_info": json({"max_total_num_tokens": 5000})})
    async with engine.client() as client:
        backend = SGLangBackend(URL, client)
        assert (await backend.scrape()).capacity_tokens == 5000
        assert (await backend.scrape()).capacity_tokens == 5000
    assert engine.calls == {"/metrics": 2, "/get_server_info": 1}


async def test_sglang_capacity_from_newer_server_info_internal_states() -> None:
    metrics, engine = await scrape({
        "/metrics": text(WITHOUT_CAPACITY),
        "/server_info": json({"internal_states": [{"max_total_num_tokens": 7000}]}),
    })
    assert metrics.capacity_tokens == 7000
    assert engine.calls["/get_server_info"] == 1  # 404: the deprecated alias is gone


@pytest.mark.parametrize("info", [
    json({"max_total_num_tokens": None}),
    json(["not", "an", "object"]),
    text("<html>not json</html>"),
])
async def test_sglang_capacity_falls_back_to_the_configured_one(
        info: Callable[[], httpx.Response]) -> None:
    metrics, _ = await scrape({"/metrics": text(WITHOUT_CAPACITY), "/get_server_info": info},
                              capacity=4096)
    assert metrics.capacity_tokens == 4096


async def test_sglang_unknown_capacity_is_a_failed_scrape() -> None:
    with pytest.raises(BackendUnavailable, match="capacity unknown"):
        await scrape({"/metrics": text(WITHOUT_CAPACITY)})


async def test_sglang_non_finite_capacity_gauge_counts_as_absent() -> None:
    broken = SGLANG_METRICS.replace("} 160000.0", "} +Inf")
    metrics, _ = await scrape({"/metrics": text(broken)}, capacity=2048)
    assert metrics.capacity_tokens == 2048


@pytest.mark.parametrize("body", [
    "<html><body>502 Bad Gateway</body></html>",
    "sglang:token_usage{model_name=\"x\" 0.5\n",
    "sglang:token_usage not-a-number\n",
    SGLANG_METRICS[: SGLANG_METRICS.index("sglang:token_usage{") + 22],  # cut mid-line
])
async def test_sglang_malformed_metrics_text_is_a_failed_scrape(body: str) -> None:
    with pytest.raises(BackendUnavailable, match="unreadable"):
        await scrape({"/metrics": text(body)}, capacity=4096)


@pytest.mark.parametrize("status", [404, 500])
async def test_sglang_metrics_endpoint_errors_are_failed_scrapes(status: int) -> None:
    with pytest.raises(BackendUnavailable):
        await scrape({"/metrics": text("nope", status)}, capacity=4096)


class Recorder:
    """A PoolListener that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def backend_up(self, backend: Backend, metrics: BackendMetrics) -> None:
        self.events.append(("up", time.monotonic()))

    def backend_down(self, backend: Backend, reason: str) -> None:
        self.events.append((f"down: {reason}", time.monotonic()))

    def backend_metrics(self, backend: Backend, metrics: BackendMetrics) -> None:
        pass

    def kinds(self) -> list[str]:
        return [kind.split(":")[0] for kind, _ in self.events]


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def watched_sglang_pool() -> AsyncIterator[tuple[FakeEngine, Recorder, BackendPool]]:
    """A pool monitoring one fake SGLang backend, started and already seen healthy."""
    engine = FakeEngine({"/metrics": text(SGLANG_METRICS)})
    listener = Recorder()
    pool = BackendPool([URL], engine.client(), kind="sglang", metrics_interval=0.05,
                       max_backoff=0.2)
    await pool.start(listener)
    try:
        await wait_for(lambda: pool.is_healthy(URL))
        yield engine, listener, pool
    finally:
        await pool.close()


async def test_pool_marks_an_sglang_backend_down_when_its_metrics_turn_unreadable() -> None:
    """Before the fix the ValueError escaped the adapter: the monitor logged it and the
    backend stayed healthy, its stale metrics steering the policy."""
    async with watched_sglang_pool() as (engine, listener, pool):
        assert listener.kinds() == ["up"]
        engine.routes["/metrics"] = text("<html>oops</html>")
        await wait_for(lambda: not pool.is_healthy(URL))
        assert listener.kinds() == ["up", "down"]
        assert "unreadable" in listener.events[1][0]
        engine.routes["/metrics"] = text(SGLANG_METRICS)
        await wait_for(lambda: pool.is_healthy(URL))
        assert listener.kinds() == ["up", "down", "up"]


async def test_pool_hold_down_keeps_a_probe_healthy_backend_down() -> None:
    """A backend whose probes succeed stays down for the hold-down a failure report asked
    for (the proxy's repeated-500 rule), then comes back by itself."""
    async with watched_sglang_pool() as (_, listener, pool):
        pool.report_failure(URL, "3 request errors in a row", hold_down_s=0.6)
        assert not pool.is_healthy(URL)
        down_at = listener.events[-1][1]
        await wait_for(lambda: pool.is_healthy(URL))
        assert listener.kinds() == ["up", "down", "up"]
        assert listener.events[-1][1] - down_at >= 0.55
        # a plain failure report (no hold) is probed again at once
        pool.report_failure(URL, "connection refused")
        down_at = listener.events[-1][1]
        await wait_for(lambda: pool.is_healthy(URL))
        assert listener.events[-1][1] - down_at < 0.5


# --- the proxy's 5xx classification, as pure functions ----------------------------------
def test_error_streak_needs_consecutive_errors_within_the_window() -> None:
    streaks = ErrorStreaks(limit=3, window_s=10.0)
    assert not streaks.failed("a", 0.0) and not streaks.failed("a", 1.0)
    streaks.answered("a")  # an answer below 500 breaks the row
    assert not streaks.failed("a", 2.0) and not streaks.failed("a", 3.0)
    assert not streaks.failed("b", 3.5)  # another backend's errors count apart
    assert streaks.failed("a", 4.0)
    assert not streaks.failed("a", 5.0)  # a completed streak starts over
    # spread out: only the errors inside the window count
    slow = ErrorStreaks(limit=3, window_s=10.0)
    assert not any(slow.failed("a", t) for t in (0.0, 8.0, 16.0, 24.0))
    assert slow.failed("a", 25.0)


@pytest.mark.parametrize(("content", "message"), [
    (b'{"error": {"message": "boom", "type": "InternalServerError", "param": null, '
     b'"code": 500}}', "boom"),
    (b'{"object": "error", "message": "old vllm", "type": "InternalServerError", '
     b'"code": 500}', "old vllm"),
    (b'{"error": "plain"}', "plain"),
])
def test_json_error_bodies_are_recognised(content: bytes, message: str) -> None:
    detail = _json_error(content)
    assert detail is not None and detail["message"] == message
    body = _client_error(500, detail, content)["error"]
    assert body["message"] == message
    assert body["code"] == "upstream_error"  # vLLM's numeric code is not OpenAI's string


@pytest.mark.parametrize("content", [b"Internal Server Error", b"<html>x</html>", b"[1, 2]",
                                     b'{"id": 1}', b""])
def test_non_error_bodies_are_wrapped(content: bytes) -> None:
    assert _json_error(content) is None
    body = _client_error(500, None, content)["error"]
    assert body["message"].startswith("the backend failed this request (HTTP 500)")
    assert body["type"] == "api_error" and body["code"] == "upstream_error"
