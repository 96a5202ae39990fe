"""The two completion routes as raw ASGI, in front of FastAPI's per-request stack.

Every LLM call of every agent crosses this path, and the sidecar promises to add less than
1.5 ms to it (issue 3; ``benchmarks/sidecar_latency.py``). FastAPI wraps each request in
about ten layers (server-error and exception middleware, its telemetry and body-limit
middleware, an exit stack, routing, dependency solving); profiled under the latency
benchmark they cost more CPU than the proxying itself. This path keeps only what the two
routes need, built from the same parts the FastAPI stack uses:

- the request limits (:class:`~thunder_middleware.security.limits.RequestLimits`);
- the added-latency timer (:class:`AddedLatencyTimer`);
- tenant resolution, the call handler and the OpenAI-style answer to every exception, all in
  ``routes_openai.serve_completion``, which the FastAPI routes run too.

Other paths, other methods and the lifespan go to FastAPI as before (:class:`SidecarApp`);
the FastAPI routes of the two paths stay registered so the OpenAPI schema describes them.
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from thunder_middleware.security.install import RequestLimitSettings
from thunder_middleware.security.limits import RequestLimits
from thunder_middleware.sidecar.metrics import SidecarMetrics
from thunder_middleware.sidecar.proxy import EXCLUDED_KEY
from thunder_middleware.sidecar.routes_openai import COMPLETION_ROUTES, serve_completion


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


def completion_stack(metrics: SidecarMetrics, limits: RequestLimitSettings) -> ASGIApp:
    """The raw stack: the same request limits as every other route, then the timer."""
    return RequestLimits(AddedLatencyTimer(serve_completion, metrics),
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
