"""The set of backends: one pooled HTTP client, discovery, scraping, health and probing.

Each backend has a monitor task. While healthy it scrapes metrics every interval (two
attempts, via tenacity); when scraping fails, or the proxy reports a connection failure,
the backend is marked down at once and the task switches to probing with exponential
back-off until the engine answers again. The pool only observes; what a health change
means for programs is the policy's business, reached through :class:`PoolListener`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp
import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_fixed,
    wait_random,
)

from thunder_middleware.sidecar.backends.base import Backend, BackendMetrics, BackendUnavailable
from thunder_middleware.sidecar.backends.openai_compat import OpenAICompatBackend
from thunder_middleware.sidecar.backends.sglang import SGLangBackend
from thunder_middleware.sidecar.backends.vllm import VLLMBackend
from thunder_middleware.sidecar.settings import BackendKind

log = logging.getLogger(__name__)

_ADAPTERS: dict[str, type[Backend]] = {
    "vllm": VLLMBackend,
    "sglang": SGLangBackend,
    "openai": OpenAICompatBackend,
}


class PoolListener(Protocol):
    """Told about health and metrics changes; the runtime forwards them to the policy."""

    def backend_up(self, backend: Backend, metrics: BackendMetrics) -> None: ...

    def backend_down(self, backend: Backend, reason: str) -> None: ...

    def backend_metrics(self, backend: Backend, metrics: BackendMetrics) -> None: ...


def make_client(connect_timeout: float) -> httpx.AsyncClient:
    """The control-plane client: scrapes, probes, model lists (a few calls a second)."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        timeout=httpx.Timeout(10.0, connect=connect_timeout),
    )


def make_session(max_connections: int, request_timeout: float, connect_timeout: float,
                 api_key: str | None = None) -> aiohttp.ClientSession:
    """The data-plane pool every proxied call goes through: keep-alive connections sized
    for a thousand concurrent programs (see Proxy for why aiohttp). Must be made inside
    the running event loop."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0,
                                       keepalive_timeout=30.0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                      sock_read=request_timeout),
        headers=headers,
    )


async def detect_kind(client: httpx.AsyncClient, url: str) -> str:
    """Guess the engine from its /metrics text: vLLM names, SGLang names, or neither."""
    try:
        response = await client.get(url + "/metrics", timeout=2.0)
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"{url}/metrics: {exc!r}") from exc
    if response.status_code >= 500:
        raise BackendUnavailable(f"{url}/metrics: HTTP {response.status_code}")
    text = response.text if response.status_code == 200 else ""
    if "vllm:" in text:
        return "vllm"
    if "sglang:" in text:
        return "sglang"
    return "openai"


def _cause(error: BaseException) -> str:
    """A one-line cause a user can act on (connection refused, HTTP status, timeout)."""
    text = str(error) or type(error).__name__
    if "ConnectError" in text or "Connection refused" in text or "All connection" in text:
        return f"{text} (nothing listening there? check the --backend URL and the engine)"
    return text


class BackendPool:
    """Backends by name (their URL), with their health as last observed."""

    def __init__(
        self,
        urls: list[str],
        client: httpx.AsyncClient,
        *,
        kind: BackendKind = "auto",
        capacity_tokens: int | None = None,
        metrics_interval: float = 1.0,
        max_backoff: float = 5.0,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self.urls = [url.rstrip("/") for url in urls]
        self.client = client
        self.kind = kind
        self.capacity_tokens = capacity_tokens
        self.metrics_interval = metrics_interval
        self.max_backoff = max_backoff
        self.backends: dict[str, Backend] = {}
        self.healthy: set[str] = set()
        self._seen: set[str] = set()  # backends tried at least once since start
        # why each backend is not healthy now (absent while healthy): logged once per
        # change, and named in the 503 a caller gets when no backend is healthy
        self.reasons: dict[str, str] = {}
        self._hold_until: dict[str, float] = {}  # monotonic time before which no probe runs
        self._wake: dict[str, asyncio.Event] = {url: asyncio.Event() for url in self.urls}
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: PoolListener | None = None
        self._session_factory = session_factory or aiohttp.ClientSession
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled data-plane session (exists between start() and close())."""
        if self._session is None:
            raise RuntimeError("the backend pool is not started")
        return self._session

    # --- lifecycle -----------------------------------------------------------------
    async def start(self, listener: PoolListener, wait_s: float = 10.0) -> None:
        """Start monitoring; return once every backend was tried once (or ``wait_s``), so
        that a sidecar answers its first request knowing which backends are up."""
        self._listener = listener
        self._session = self._session_factory()
        self._tasks = [
            asyncio.create_task(self._monitor(url), name=f"monitor {url}") for url in self.urls
        ]
        deadline = asyncio.get_running_loop().time() + wait_s
        while len(self._seen) < len(self.urls):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.client.aclose()
        if self._session is not None:
            await self._session.close()

    # --- queries -------------------------------------------------------------------
    def is_healthy(self, name: str) -> bool:
        return name in self.healthy

    def any_healthy(self) -> bool:
        return bool(self.healthy)

    def down_reasons(self) -> dict[str, str]:
        """Each backend that is not healthy, with why (as last observed)."""
        return {url: self.reasons.get(url, "not probed yet") for url in self.urls
                if url not in self.healthy}

    def get(self, name: str) -> Backend:
        return self.backends[name]

    def report_failure(self, name: str, reason: str, *, hold_down_s: float = 0.0) -> None:
        """The proxy saw the backend fail: down now; probing starts at once, or after
        ``hold_down_s`` (for a backend whose probes succeed although it fails requests)."""
        backend = self.backends.get(name)
        if backend is not None and name in self.healthy:
            if hold_down_s > 0.0:
                self._hold_until[name] = time.monotonic() + hold_down_s
            self._mark_down(backend, reason)
        event = self._wake.get(name)
        if event is not None:
            event.set()

    # --- monitoring ----------------------------------------------------------------
    def _mark_down(self, backend: Backend, reason: str) -> None:
        self.healthy.discard(backend.name)
        self._note_failure(backend.name, reason)
        if self._listener is not None:
            self._listener.backend_down(backend, reason)

    def _note_failure(self, url: str, reason: str) -> None:
        """Remember why ``url`` is down; log it (WARNING) when the cause changes, so a dead
        backend is named once at start-up, not once per probe."""
        if self.reasons.get(url) != reason:
            self.reasons[url] = reason
            log.warning("backend %s unhealthy: %s", url, reason)

    def _probe_failed(self, url: str, error: BaseException | None) -> None:
        if error is not None:
            self._note_failure(url, _cause(error))

    async def _adapter(self, url: str) -> Backend:
        backend = self.backends.get(url)
        if backend is None:
            kind = self.kind if self.kind != "auto" else await detect_kind(self.client, url)
            backend = _ADAPTERS[kind](url, self.client, capacity_tokens=self.capacity_tokens)
            self.backends[url] = backend
        return backend

    async def _scrape(self, url: str) -> tuple[Backend, BackendMetrics]:
        try:
            backend = await self._adapter(url)
            return backend, await backend.scrape()
        finally:
            self._seen.add(url)

    async def _scrape_twice(self, url: str) -> tuple[Backend, BackendMetrics]:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(2),
            wait=wait_fixed(0.1),
            retry=retry_if_exception_type(BackendUnavailable),
            reraise=True,
        ):
            with attempt:
                return await self._scrape(url)
        raise AssertionError("unreachable")

    async def _probe_until_up(self, url: str) -> tuple[Backend, BackendMetrics]:
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.2, max=self.max_backoff) + wait_random(0, 0.1),
            retry=retry_if_exception_type(BackendUnavailable),
            before_sleep=lambda state: self._probe_failed(
                url, state.outcome.exception() if state.outcome else None),
        ):
            with attempt:
                return await self._scrape(url)
        raise AssertionError("unreachable")

    async def _monitor(self, url: str) -> None:
        wake = self._wake[url]
        while True:
            try:
                if url in self.healthy:
                    backend, metrics = await self._scrape_twice(url)
                    if url in self.healthy and self._listener is not None:
                        self._listener.backend_metrics(backend, metrics)
                else:
                    hold_s = self._hold_until.pop(url, 0.0) - time.monotonic()
                    if hold_s > 0.0:
                        await asyncio.sleep(hold_s)
                    backend, metrics = await self._probe_until_up(url)
                    self.healthy.add(url)
                    self.reasons.pop(url, None)
                    log.info("backend %s healthy (%s, capacity %s tokens)", url,
                             backend.kind, metrics.capacity_tokens)
                    if self._listener is not None:
                        self._listener.backend_up(backend, metrics)
            except BackendUnavailable as exc:
                backend_or_none = self.backends.get(url)
                if backend_or_none is not None and url in self.healthy:
                    self._mark_down(backend_or_none, str(exc))
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # a listener bug must not kill health monitoring
                log.exception("backend monitor of %s", url)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.metrics_interval)
