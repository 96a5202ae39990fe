"""The ONE place that decides which tenant a request acts for.

Until API keys exist (issue 7, ``thunder_middleware.security``) every caller is the
``default`` tenant. Routes depend on :func:`resolve_tenant` through FastAPI, so plugging in
key-based tenants later changes this file only; the runtime already namespaces every
program id as ``"{tenant}/{program_id}"``.
"""

from __future__ import annotations

from fastapi import Request

DEFAULT_TENANT = "default"


async def resolve_tenant(request: Request) -> str:
    """The tenant of the caller. A future version raises APIError(401/403) here."""
    resolver = getattr(request.app.state, "tenant_resolver", None)
    if resolver is not None:
        tenant: str = await resolver(request)
        return tenant
    return DEFAULT_TENANT
