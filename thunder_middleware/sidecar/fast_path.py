"""The two completion routes as raw ASGI, in front of FastAPI's per-request stack.

Every LLM call of every agent crosses this path, and the sidecar promises to add less than
1.5 ms to it (issue 3; ``benchmarks/sidecar_latency.py``). FastAPI wraps each request in
about ten layers (server-error and exception middleware, its telemetry and body-limit
middleware, an exit stack, routing, dependency solving); profiled under the latency
benchmark they cost more CPU than the proxying itself. This path keeps only what the two
routes need, built from the same parts the FastAPI stack uses:

- the request limits (:class:`~thunder_middleware.security.limits.RequestLimits`);
- the added-latency timer (:class:`AddedLatencyTimer`);
- tenant resolution (``tenancy.resolve_tenant``) and the same call handler as the FastAPI
  routes (``routes_openai.complete_call``);
- the same OpenAI-style answer to every exception (``errors.error_response``).

Other paths, other methods and the lifespan go to FastAPI as before (:class:`SidecarApp`);
the FastAPI routes of the two paths stay registered so the OpenAPI schema describes them.
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from thunder_middleware.security.install import RequestLimitSettings
from thunder_middleware.security.limits import RequestLimits
from thunder_middleware.sidecar.errors import error_response
from thunder_middleware.sidecar.metrics import SidecarMetrics
from thunder_middleware.sidecar.proxy import EXCLUDED_KEY
from thunder_middleware.sidecar.routes_openai import COMPLETION_ROUTES, complete_call
from thunder_middleware.sidecar.tenancy import resolve_tenant


def is_completion_call(scope: Scope) -> bool:
    return (scope["type"] == "http" and scope["path"] in COMPLETION_ROUTES
            and scope["method"] == "POST")


class AddedLatencyTimer:
    """Times a whole proxied request (limits, parsing, policy, response writing) and records
    what is left after the gate wait and the upstream call: the sidecar's own cost."""

    def __init__(self, app: ASGIApp, metrics: SidecarMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            excluded = scope.get(EXCLUDED_KEY)
            if excluded is not None:  # requests that reached a backend
                self.metrics.added_latency.observe(
                    max(0.0, time.perf_counter() - started - excluded))


async def completion_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """One completion call, from body to answer.

    Exceptions raised before the answer starts become OpenAI-style errors here (as FastAPI's
    handlers would make them); once ``http.response.start`` went out, nothing can change the
    status, and uvicorn closes the connection (a stream's own breakage is turned into an SSE
    error event by the proxy before it gets here).
    """
    request = Request(scope, receive)
    try:
        response = await complete_call(request, await resolve_tenant(request), scope["path"])
    except Exception as exc:  # every failure speaks OpenAI's error shape, never a traceback
        response = error_response(exc)
    await response(scope, receive, send)


def completion_stack(metrics: SidecarMetrics, limits: RequestLimitSettings) -> ASGIApp:
    """The raw stack: the same request limits as every other route, then the timer."""
    return RequestLimits(AddedLatencyTimer(completion_endpoint, metrics),
                         **limits.middleware_options())


class SidecarApp(FastAPI):
    """FastAPI, except that completion calls take the raw path set in ``completion_path``."""

    completion_path: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.completion_path is not None and is_completion_call(scope):
            scope["app"] = self  # what Request.app reads, as Starlette would set it
            await self.completion_path(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
