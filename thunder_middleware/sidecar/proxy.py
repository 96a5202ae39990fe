"""Forwarding OpenAI calls to the backend the policy chose, and reporting how they went.

Every call ends in exactly one ``runtime.complete`` (usage None when it failed or was
aborted), so no program is ever left reasoning forever.

Backend faults and request errors are told apart, so that one bad request cannot flush a
healthy replica and evacuate all its programs:

- a *backend fault* (connection refused or reset, a timeout, HTTP 502/503/504, any other 5xx
  without a JSON error body, or a 5xx from a backend whose ``/health`` no longer answers)
  marks the backend down and, if no byte reached the client yet, goes back through the gate
  once: the policy places the call on a healthy replica (a migration);
- a *request error* (HTTP 500, or another 5xx with a JSON error body, from a backend whose
  ``/health`` still answers) is that request's answer: the client gets it as an OpenAI-style
  error with the same status, and the backend stays up. ``ERROR_STREAK_LIMIT`` of them in a
  row (no answer below 500 between them) within ``ERROR_STREAK_WINDOW_S`` do mark the
  backend down, for at least ``ERROR_STREAK_HOLD_DOWN_S``: a replica that fails every
  request is not healthy, whatever its ``/health`` says.

A stream that breaks after bytes were sent ends with an SSE error event and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from thunder_middleware.policy.types import Usage
from thunder_middleware.sidecar.backends.base import BackendUnavailable
from thunder_middleware.sidecar.calls import open_calls
from thunder_middleware.sidecar.errors import APIError, error_body, no_backend
from thunder_middleware.sidecar.gates import ClientDisconnected, unless_disconnected
from thunder_middleware.sidecar.metrics import SidecarMetrics
from thunder_middleware.sidecar.payload import ParsedRequest
from thunder_middleware.sidecar.runtime import Lease, SchedulerRuntime
from thunder_middleware.sidecar.sse import (
    DONE_EVENT,
    SSEEventSplitter,
    error_event,
    filter_event,
    usage_from_dict,
)
from thunder_middleware.sidecar.timeline import StepOutcome

log = logging.getLogger(__name__)

_JSON_HEADERS = {"content-type": "application/json"}
CLIENT_CLOSED_REQUEST = 499  # nginx's convention; nobody reads it, the client is gone


#: what a dead, hung or half-closed backend raises in aiohttp
UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError)

#: statuses that say the replica (or the gateway in front of it) cannot serve at all
FAULT_STATUSES = frozenset({502, 503, 504})
#: request errors in a row (no answer below 500 between them), within the window, that mark
#: a backend down although its /health answers
ERROR_STREAK_LIMIT = 3
ERROR_STREAK_WINDOW_S = 30.0
#: how long a backend so marked stays down before probing resumes (its /health answers, so
#: without a hold it would be back at the very next probe)
ERROR_STREAK_HOLD_DOWN_S = 5.0
#: the /health check that decides whether a 5xx is the request's or the backend's
HEALTH_CHECK_TIMEOUT_S = 2.0


class UpstreamFailed(Exception):
    """The backend failed the call before the client saw a byte: retryable elsewhere."""


class CallAborted(Exception):
    """The sidecar cut a stream short (its program was released, or the watchdog)."""


#: what a client is told when its stream broke: what failed, not how (no exception text,
#: no backend address; those go to the log)
STREAM_BROKE = ("the backend's connection broke midway through this stream; the answer is "
                "incomplete")


class ErrorStreaks:
    """Request errors in a row per backend; any answer below 500 ends a backend's streak."""

    def __init__(self, limit: int = ERROR_STREAK_LIMIT,
                 window_s: float = ERROR_STREAK_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._errors: dict[str, list[float]] = {}

    def answered(self, backend: str) -> None:
        self._errors.pop(backend, None)

    def failed(self, backend: str, now: float) -> bool:
        """Count one request error; True when it completes a streak (which then restarts)."""
        recent = [t for t in self._errors.get(backend, ()) if now - t <= self.window_s]
        recent.append(now)
        if len(recent) >= self.limit:
            self._errors.pop(backend, None)
            return True
        self._errors[backend] = recent
        return False


@dataclass(slots=True)
class OpenStream:
    """An upstream stream whose first events were already read."""

    response: aiohttp.ClientResponse
    chunks: AsyncIterator[bytes]
    splitter: SSEEventSplitter
    first_events: list[bytes]
    sent_at: float
    first_token_s: float | None


class Proxy:
    """Forwards one route's calls; one instance per app.

    Upstream calls go through one pooled aiohttp session: measured here at about 0.2 ms of
    CPU per call against 0.55 ms for httpx over the same aiohttp pool and 1.1-1.5 ms for
    httpx's own pool (which polls every idle connection on each request), and this is the
    hot path of every LLM call. Control-plane calls (scrapes, probes, models) use httpx.
    """

    def __init__(self, runtime: SchedulerRuntime, metrics: SidecarMetrics) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.streaks = ErrorStreaks()

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.runtime.pool.session

    async def forward(self, request: Request, path: str, key: str, parsed: ParsedRequest,
                      route: str) -> Response:
        """Send the call, retrying once through the gate after a backend fault."""
        receive = request.receive
        for attempt in (0, 1):
            if not self.runtime.pool.any_healthy():
                raise no_backend(self.runtime.pool.down_reasons())
            try:
                lease = await self.runtime.acquire(key, parsed.prompt_chars, receive,
                                                   prompt_tokens_hint=parsed.prompt_tokens_hint,
                                                   retried=attempt > 0,
                                                   call_tokens=call_tokens(parsed))
            except ClientDisconnected:
                self.metrics.requests.labels(route=route, outcome="abandoned").inc()
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            calls = open_calls(request.scope)
            if calls is not None:
                calls.leases.append(lease)
            lease.on_abort = _cancel_task(lease)
            try:
                if parsed.stream:
                    return await self._stream(request, path, lease, parsed, route)
                return await self._call(request, path, lease, parsed, route)
            except UpstreamFailed as exc:
                if attempt == 0:
                    self.metrics.retries.inc()
                    log.warning("retrying %s after: %s", key, exc)
                    continue
                self.metrics.requests.labels(route=route, outcome="failed").inc()
                raise APIError(502, f"the backend failed twice: {exc}",
                               code="upstream_unavailable") from exc
        raise AssertionError("unreachable")

    def _fail(self, request: Request, lease: Lease, reason: str, sent_at: float,
              stream: bool) -> UpstreamFailed:
        total_s = time.perf_counter() - sent_at
        exclude_from_added_latency(request.scope, total_s + (0.0 if stream else lease.queue_wait_s))
        self.runtime.complete(lease, usage=None, outcome="failed", stream=stream,
                              first_token_s=None, total_s=total_s)
        self.runtime.backend_failed(lease.backend, reason)
        return UpstreamFailed(f"{lease.backend}: {reason}")

    async def _upstream_5xx(self, request: Request, lease: Lease, route: str, status: int,
                            content: bytes, sent_at: float, *, stream: bool) -> Response:
        """A 5xx answer: raise UpstreamFailed for a backend fault (marked down, retried
        elsewhere), or answer the client with this request's error (module docstring)."""
        detail = _json_error(content)
        if status in FAULT_STATUSES or (status != 500 and detail is None):
            raise self._fail(request, lease, f"HTTP {status}", sent_at, stream)
        if not await self._health_answers(lease.backend):
            raise self._fail(request, lease, f"HTTP {status} and /health does not answer",
                             sent_at, stream)
        total_s = time.perf_counter() - sent_at
        exclude_from_added_latency(request.scope, total_s + (0.0 if stream else lease.queue_wait_s))
        self.runtime.complete(lease, usage=None, outcome="failed", stream=stream,
                              first_token_s=None, total_s=total_s)
        self.metrics.requests.labels(route=route, outcome=str(status)).inc()
        if self.streaks.failed(lease.backend, time.monotonic()):
            self.runtime.backend_failed(
                lease.backend, f"{self.streaks.limit} request errors in a row (last HTTP "
                f"{status})", hold_down_s=ERROR_STREAK_HOLD_DOWN_S)
        else:
            log.info("%s answered HTTP %s to one request of %s; it stays up", lease.backend,
                     status, lease.key)
        return JSONResponse(_client_error(status, detail, content), status_code=status)

    async def _health_answers(self, name: str) -> bool:
        if not self.runtime.pool.is_healthy(name):
            return False  # already marked down meanwhile: a fault, retried elsewhere
        try:
            await self.runtime.pool.get(name).probe(HEALTH_CHECK_TIMEOUT_S)
        except (BackendUnavailable, KeyError):
            return False
        return True

    def _cut_short(self, lease: Lease, route: str, sent_at: float, *, stream: bool) -> Response:
        """The sidecar aborted the call before its answer started: a clear error."""
        self.runtime.complete(lease, usage=None, outcome="aborted", stream=stream,
                              first_token_s=None, total_s=time.perf_counter() - sent_at)
        self.metrics.requests.labels(route=route, outcome="aborted").inc()
        return APIError(409, lease.abort_reason or "the call was aborted",
                        code="call_aborted").response()

    def _aborted(self, lease: Lease, route: str, sent_at: float, *, stream: bool) -> Response:
        """The client left before the answer: the call ends as aborted, nobody reads a body."""
        self.runtime.complete(lease, usage=None, outcome="aborted", stream=stream,
                              first_token_s=None, total_s=time.perf_counter() - sent_at)
        self.metrics.requests.labels(route=route, outcome="aborted").inc()
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    # --- non-streaming -------------------------------------------------------------------
    async def _call(self, request: Request, path: str, lease: Lease, parsed: ParsedRequest,
                    route: str) -> Response:
        sent_at = time.perf_counter()
        try:
            status, content_type, content = await unless_disconnected(
                self._post(lease.backend + path, parsed.upstream_body), request.receive)
        except ClientDisconnected:
            return self._aborted(lease, route, sent_at, stream=False)
        except asyncio.CancelledError:
            if not _own_cancellation(lease):
                raise
            return self._cut_short(lease, route, sent_at, stream=False)
        except UPSTREAM_ERRORS as exc:
            raise self._fail(request, lease, repr(exc), sent_at, False) from exc
        if status >= 500:
            return await self._upstream_5xx(request, lease, route, status, content, sent_at,
                                            stream=False)
        self.streaks.answered(lease.backend)
        upstream_s = time.perf_counter() - sent_at
        exclude_from_added_latency(request.scope, upstream_s + lease.queue_wait_s)
        usage: Usage | None = None
        if status == 200:
            usage = _usage_of_body(content)
        self.runtime.complete(lease, usage=usage, outcome="ok" if usage else "failed",
                              stream=False, first_token_s=None, total_s=upstream_s)
        self.metrics.requests.labels(route=route, outcome=str(status)).inc()
        return Response(content=content, status_code=status, media_type=content_type)

    async def _post(self, url: str, body: bytes) -> tuple[int, str, bytes]:
        """One non-streaming upstream call; cancelling it closes its connection, which is
        how the backend learns that the client left."""
        async with self.session.post(url, data=body, headers=_JSON_HEADERS) as upstream:
            content = await upstream.read()
            return upstream.status, upstream.headers.get("content-type",
                                                         "application/json"), content
    # --- streaming -----------------------------------------------------------------------
    async def _open_stream(self, path: str, lease: Lease, parsed: ParsedRequest) -> OpenStream:
        """Send, and read until the first whole event: until then nothing reached the
        client, so a failure here is still retryable."""
        sent_at = time.perf_counter()
        response = await self.session.post(lease.backend + path, data=parsed.upstream_body,
                                           headers=_JSON_HEADERS)
        chunks = response.content.iter_any()
        splitter = SSEEventSplitter()
        if response.status != 200:
            return OpenStream(response, chunks, splitter, [], sent_at, None)
        events: list[bytes] = []
        try:
            async for chunk in chunks:
                events = splitter.feed(chunk)
                if events:
                    break
        except BaseException:
            response.close()
            raise
        return OpenStream(response, chunks, splitter, events, sent_at,
                          time.perf_counter() - sent_at)

    async def _stream(self, request: Request, path: str, lease: Lease, parsed: ParsedRequest,
                      route: str) -> Response:
        sent_at = time.perf_counter()
        exclude_from_added_latency(request.scope, lease.queue_wait_s)
        try:
            opened = await unless_disconnected(self._open_stream(path, lease, parsed),
                                               request.receive)
        except ClientDisconnected:
            return self._aborted(lease, route, sent_at, stream=True)
        except asyncio.CancelledError:
            if not _own_cancellation(lease):
                raise
            return self._cut_short(lease, route, sent_at, stream=True)
        except UPSTREAM_ERRORS as exc:
            raise self._fail(request, lease, repr(exc), sent_at, True) from exc
        status = opened.response.status
        if status != 200:
            try:
                body = await opened.response.read()
            except UPSTREAM_ERRORS as exc:
                raise self._fail(request, lease, repr(exc), sent_at, True) from exc
            finally:
                opened.response.release()
            if status >= 500:
                return await self._upstream_5xx(request, lease, route, status, body, sent_at,
                                                stream=True)
            self.streaks.answered(lease.backend)
            self.runtime.complete(lease, usage=None, outcome="failed", stream=True,
                                  first_token_s=None, total_s=time.perf_counter() - sent_at)
            self.metrics.requests.labels(route=route, outcome=str(status)).inc()
            return Response(content=body, status_code=status,
                            media_type=opened.response.headers.get("content-type"))
        if not opened.first_events:
            opened.response.close()
            raise self._fail(request, lease, "stream ended before its first event", sent_at,
                             True)
        self.streaks.answered(lease.backend)
        self.metrics.requests.labels(route=route, outcome="200").inc()
        # from here the stream is cut short by failing its upstream reads, so that the
        # relay can still tell its client why
        content = opened.response.content
        lease.on_abort = lambda: content.set_exception(CallAborted())
        relay = self._relay(lease, opened, parsed.client_wants_usage, request.scope)
        calls = open_calls(request.scope)
        if calls is not None:
            calls.streams.append(relay)
        return StreamingResponse(
            relay,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _relay(self, lease: Lease, opened: OpenStream, client_wants_usage: bool,
                     scope: MutableMapping[str, Any]) -> AsyncGenerator[bytes, None]:
        """Pass events on one by one; closing the upstream stream on any exit is what
        aborts the backend's request when the client leaves."""
        usage: Usage | None = None
        outcome: StepOutcome = "aborted"
        try:
            for event in opened.first_events:
                filtered = filter_event(event, client_wants_usage)
                usage = filtered.usage or usage
                if filtered.forward is not None:
                    yield filtered.forward
            try:
                async for chunk in opened.chunks:
                    for event in opened.splitter.feed(chunk):
                        filtered = filter_event(event, client_wants_usage)
                        usage = filtered.usage or usage
                        if filtered.forward is not None:
                            yield filtered.forward
                    lease.progress = time.monotonic()  # the client took what came so far
                rest = opened.splitter.remainder()
                if rest.strip():
                    yield rest + b"\n\n"
                outcome = "ok"
            except CallAborted:
                yield error_event(lease.abort_reason or "the call was aborted",
                                  code="call_aborted")
                yield DONE_EVENT
            except UPSTREAM_ERRORS as exc:
                if lease.abort_reason is not None:  # the abort closed the connection
                    yield error_event(lease.abort_reason, code="call_aborted")
                    yield DONE_EVENT
                    return
                outcome = "failed"
                log.warning("the stream of %s from %s broke: %r", lease.key, lease.backend, exc)
                self.runtime.backend_failed(lease.backend, repr(exc))
                yield error_event(STREAM_BROKE)
                yield DONE_EVENT
        finally:
            if outcome == "ok":
                opened.response.release()  # fully read: the connection goes back to the pool
            else:
                opened.response.close()  # aborted or broken: drop the connection
            total_s = time.perf_counter() - opened.sent_at
            exclude_from_added_latency(scope, total_s)
            self.runtime.complete(
                lease, usage=usage if outcome == "ok" else None,
                outcome=outcome,
                stream=True, first_token_s=opened.first_token_s, total_s=total_s)


EXCLUDED_KEY = "thunder.excluded_s"
#: characters per token when a call's prompt size is only known in characters
CHARS_PER_TOKEN = 4


def call_tokens(parsed: ParsedRequest) -> int:
    """The KV tokens a call may hold at most: its prompt and the output it asks for."""
    prompt = parsed.prompt_tokens_hint or parsed.prompt_chars // CHARS_PER_TOKEN
    output = parsed.body.get("max_tokens") or parsed.body.get("max_completion_tokens")
    return prompt + (output if isinstance(output, int) and output > 0 else 0)


def _cancel_task(lease: Lease) -> Callable[[], None]:
    """How a call is cut short before its answer starts: cancel the task serving it."""
    task = lease.task

    def cancel() -> None:
        if task is not None and not task.done() and not task.cancelling():
            task.cancel()

    return cancel


def _own_cancellation(lease: Lease) -> bool:
    """Whether a CancelledError is the sidecar's abort of ``lease`` (then absorbed: the
    call answers its client), not a shutdown or an enclosing timeout (passed on)."""
    task = asyncio.current_task()
    return lease.abort_reason is not None and task is not None and task.uncancel() == 0


def exclude_from_added_latency(scope: MutableMapping[str, Any], seconds: float) -> None:
    """Time that is not the sidecar's own (gate wait, upstream): the latency middleware
    subtracts it from the request's total."""
    scope[EXCLUDED_KEY] = scope.get(EXCLUDED_KEY, 0.0) + seconds


def _usage_of_body(content: bytes) -> Usage | None:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return usage_from_dict(body.get("usage")) if isinstance(body, dict) else None


def _json_error(content: bytes) -> dict[str, Any] | None:
    """The fields of a JSON error body: OpenAI's ``{"error": {...}}``, or vLLM's older
    ``{"object": "error", "message": ...}``; None for anything else."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    if body.get("object") == "error" or "message" in body:
        return body
    return None


def _client_error(status: int, detail: dict[str, Any] | None,
                  content: bytes) -> dict[str, dict[str, str | None]]:
    """The backend's error for this one request, in OpenAI's shape."""
    detail = detail or {}
    message = detail.get("message")
    if not isinstance(message, str) or not message:
        text = content.decode("utf-8", "replace").strip()[:500]
        message = f"the backend failed this request (HTTP {status})" + (
            f": {text}" if text else "")
    error_type = detail.get("type")
    param = detail.get("param")
    code = detail.get("code")
    return error_body(
        message,
        error_type if isinstance(error_type, str) and error_type else "api_error",
        param if isinstance(param, str) else None,
        code if isinstance(code, str) and code else "upstream_error",
    )
