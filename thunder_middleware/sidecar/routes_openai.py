"""The OpenAI surface: chat and text completions through the gate, models from every backend.

Bodies are read raw and parsed once (no pydantic model of the OpenAI schema): the sidecar
checks only what it reads and forwards everything else untouched, so the hot path stays
short and new OpenAI fields keep working.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from thunder_middleware.sidecar.calls import CALLS_KEY, OpenCalls
from thunder_middleware.sidecar.errors import error_response, no_backend
from thunder_middleware.sidecar.identity import (
    PROGRAM_ID_HEADER,
    extract_program_id,
    header_value,
    namespaced,
)
from thunder_middleware.sidecar.payload import Route, prepare_request
from thunder_middleware.sidecar.proxy import Proxy
from thunder_middleware.sidecar.settings import SidecarSettings
from thunder_middleware.sidecar.tenancy import resolve_tenant

#: Served by ``fast_path`` in the running sidecar (POSTs to these two paths never reach
#: FastAPI's router); registered here so the OpenAPI schema, and the fuzzing built on it,
#: describe them, and so that a FastAPI app without the fast path still serves them.
router = APIRouter()


CHAT_PATH = "/v1/chat/completions"
TEXT_PATH = "/v1/completions"
#: the completion paths, and the OpenAI route (body shape) each one is
COMPLETION_ROUTES: dict[str, Route] = {CHAT_PATH: "chat", TEXT_PATH: "completions"}


async def complete_call(request: Request, tenant: str, path: str) -> Response:
    """One completion call to ``path`` (a COMPLETION_ROUTES key) for ``tenant``: parse,
    identify, forward through the gate."""
    route = COMPLETION_ROUTES[path]
    settings: SidecarSettings = request.app.state.settings
    proxy: Proxy = request.app.state.proxy
    parsed = prepare_request(await request.body(), route,
                             strip_program_id=settings.strip_program_id)
    identity = extract_program_id(parsed.body, request.headers, settings.max_program_id_length)
    response = await proxy.forward(request, path, namespaced(tenant, identity.internal_id),
                                   parsed, route)
    response.headers[PROGRAM_ID_HEADER] = header_value(identity.program_id)
    return response


async def serve_completion(scope: Scope, receive: Receive, send: Send,
                           tenant: str | None = None) -> None:
    """One completion request, from body to the last byte of its answer: THE place where
    its calls end (see :mod:`thunder_middleware.sidecar.calls`).

    Exceptions raised before the answer starts become OpenAI-style errors here; once
    ``http.response.start`` went out nothing can change the status, and uvicorn closes the
    connection (a stream's own breakage is turned into an SSE error event by the proxy).
    A cancellation the sidecar itself caused (the watchdog) ends here too; any other is
    passed on.
    """
    request = Request(scope, receive)
    calls = OpenCalls(request.app.state.runtime)
    scope[CALLS_KEY] = calls
    outcome = "failed"
    try:
        try:
            if tenant is None:
                tenant = await resolve_tenant(request)
            response = await complete_call(request, tenant, scope["path"])
        except Exception as exc:  # every failure speaks OpenAI's error shape
            response = error_response(exc)
        await response(scope, receive, send)
        outcome = "ok"
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not calls.aborted or task is None or task.uncancel() > 0:
            outcome = "aborted"
            raise
    finally:
        await calls.close(outcome)


class CompletionCall(Response):
    """The answer of the FastAPI completion routes: the whole call runs when the answer is
    sent, through :func:`serve_completion`, so both stacks end calls in the same place."""

    def __init__(self, tenant: str) -> None:
        super().__init__()
        self.tenant = tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_completion(scope, receive, send, self.tenant)


@router.post(CHAT_PATH)
async def chat_completions(request: Request, tenant: str = Depends(resolve_tenant)) -> Response:
    return CompletionCall(tenant)


@router.post(TEXT_PATH)
async def completions(request: Request, tenant: str = Depends(resolve_tenant)) -> Response:
    return CompletionCall(tenant)


@router.get("/v1/models")
async def models(request: Request, tenant: str = Depends(resolve_tenant)) -> Response:
    """The union of the healthy backends' models (by id, first seen wins)."""
    proxy: Proxy = request.app.state.proxy
    pool = proxy.runtime.pool
    names = sorted(pool.healthy)
    if not names:
        raise no_backend(pool.down_reasons())

    async def fetch(name: str) -> list[dict[str, Any]]:
        try:
            response = await pool.client.get(name + "/v1/models", timeout=5.0)
            data = response.json().get("data", []) if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            return []
        return [item for item in data if isinstance(item, dict) and "id" in item]

    seen: dict[str, dict[str, Any]] = {}
    for items in await asyncio.gather(*(fetch(name) for name in names)):
        for item in items:
            seen.setdefault(str(item["id"]), item)
    return JSONResponse({"object": "list", "data": list(seen.values())})
