"""Limits on what one caller may hold or send: tenant caps and request-size/time limits.

Tenant caps are pure (given counts, refuse or not). :class:`RequestLimits` is a raw ASGI
middleware because the checks must happen before any route reads the body: a 2 GB upload
or a client that sends headers and then trickles (or stalls) its body must be cut off by
the server, not buffered into memory or allowed to pin a request task forever. uvicorn's
own limits cover the rest: h11 refuses oversized header blocks (400) and
``timeout_keep_alive`` closes idle connections between requests; headers that never finish
are cut by ``sidecar.deadlines``.

A body has two clocks: ``body_timeout_s`` between chunks (a stall) and ``body_deadline_s``
for all of it (a client sending a byte just often enough to beat the first).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thunder_middleware.security.config import SecurityConfig
from thunder_middleware.security.errors import over_cap

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_BODY_DEADLINE_S = 300.0


class TenantCaps:
    """Per-tenant caps on live programs and environments (429 with Retry-After)."""

    def __init__(self, config: SecurityConfig, retry_after_s: float = 5.0) -> None:
        self.config = config
        self.retry_after_s = retry_after_s

    def admit_program(self, tenant: str, live_programs: int) -> None:
        """Raise AccessRefused(429) when ``tenant`` may not start one more program."""
        cap = self.config.max_programs(tenant)
        if cap is not None and live_programs >= cap:
            raise over_cap("programs", tenant, cap, self.retry_after_s)

    def admit_environment(self, tenant: str, live_environments: int) -> None:
        cap = self.config.max_environments(tenant)
        if cap is not None and live_environments >= cap:
            raise over_cap("environments", tenant, cap, self.retry_after_s)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a chunked body passes the limit. An HTTPException so
    that FastAPI's body parsing re-raises it instead of wrapping it; the middleware then
    answers for it whatever handler caught it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodyTimeout(HTTPException):
    def __init__(self, timeout_s: float, *, whole: bool = False) -> None:
        what = "the whole request body" if whole else "the next part of the request body"
        super().__init__(408, f"{what} was not received within {timeout_s:g} s")
        self.code = "body_deadline" if whole else "body_timeout"


def _error(status: int, message: str, code: str) -> bytes:
    error_type = "timeout_error" if status == 408 else "invalid_request_error"
    return orjson.dumps({"error": {"message": message, "type": error_type, "param": None,
                                   "code": code}})


async def _refuse(send: Send, refusal: HTTPException) -> None:
    code = "body_too_large" if refusal.status_code == 413 else getattr(
        refusal, "code", "body_timeout")
    await _answer(send, refusal.status_code, str(refusal.detail), code)


async def _answer(send: Send, status: int, message: str, code: str) -> None:
    body = _error(status, message, code)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: header bytes (431), body bytes (413), body arrival time (408)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                 body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
                 body_deadline_s: float = DEFAULT_BODY_DEADLINE_S) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.body_timeout_s = body_timeout_s
        self.body_deadline_s = body_deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        if sum(len(name) + len(value) for name, value in headers) > self.max_header_bytes:
            await _answer(send, 431, f"request headers exceed {self.max_header_bytes} bytes",
                          "headers_too_large")
            return
        declared = next((value for name, value in headers if name == b"content-length"), None)
        if declared is not None:
            try:
                too_large = int(declared) > self.max_body_bytes
            except ValueError:
                await _answer(send, 400, "invalid Content-Length header", "invalid_header")
                return
            if too_large:
                await _answer(send, 413, f"request body exceeds the limit of "
                              f"{self.max_body_bytes} bytes", "body_too_large")
                return
        refusal: list[HTTPException] = []  # set by the guarded receive
        answered = False

        async def send_or_refuse(message: Message) -> None:
            """Whatever the app answers after the body was refused (a handler's 400/500, or
            FastAPI's 'error parsing the body'), the client gets our 413/408 instead."""
            nonlocal answered
            if answered:
                return
            if refusal and message["type"] == "http.response.start":
                answered = True
                await _refuse(send, refusal[0])
                return
            await send(message)

        try:
            await self.app(scope, self._guarded_receive(receive, refusal), send_or_refuse)
        except (BodyTooLarge, BodyTimeout) as exc:
            if not answered:
                answered = True
                await _refuse(send, exc)

    def _guarded_receive(self, receive: Receive, refusal: list[HTTPException]) -> Receive:
        """``receive`` with a byte count and a per-chunk deadline while the body arrives;
        after the body, it is the plain ``receive`` (it then waits for a disconnect)."""
        received = 0
        body_done = False
        deadline: float | None = None  # of the whole body, from its first read

        async def guarded() -> Message:
            nonlocal received, body_done, deadline
            if body_done:
                return await receive()
            now = asyncio.get_running_loop().time()
            if deadline is None:
                deadline = now + self.body_deadline_s
            whole = deadline < now + self.body_timeout_s  # which clock runs out first
            try:
                # no task, unlike wait_for
                async with asyncio.timeout_at(min(deadline, now + self.body_timeout_s)):
                    message: dict[str, Any] = dict(await receive())
            except TimeoutError as exc:
                refusal.append(BodyTimeout(self.body_deadline_s if whole
                                           else self.body_timeout_s, whole=whole))
                raise refusal[0] from exc
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refusal.append(BodyTooLarge(self.max_body_bytes))
                    raise refusal[0]
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return guarded
