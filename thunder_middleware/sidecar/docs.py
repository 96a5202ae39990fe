"""The API documentation behind the API key when keys are on.

The schema lists every route and field of the control API: with tenants, only callers with a
key should read it (``--public-docs`` opens it again). FastAPI's own documentation routes
take no dependencies, so with keys on the app is built without them (:data:`HIDDEN_DOCS`)
and these routes, which resolve the tenant first, serve the same pages.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from thunder_middleware.sidecar.tenancy import resolve_tenant

#: FastAPI keyword arguments that leave out its unguarded documentation routes
HIDDEN_DOCS: dict[str, Any] = {"docs_url": None, "redoc_url": None, "openapi_url": None}
OPENAPI_URL = "/openapi.json"


def guarded_docs_router(app: FastAPI) -> APIRouter:
    router = APIRouter(dependencies=[Depends(resolve_tenant)], include_in_schema=False)

    @router.get(OPENAPI_URL)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs")
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=app.title + " - docs")

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=OPENAPI_URL, title=app.title + " - ReDoc")

    return router
