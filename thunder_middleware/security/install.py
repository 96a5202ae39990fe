"""Plug the security layer into a sidecar app: tenant resolution, caps, request limits.

The sidecar's ``tenancy.resolve_tenant`` asks ``app.state.tenant_resolver``; this module
provides it (API key -> tenant, 401 otherwise) and turns this package's framework-free
refusals into the sidecar's OpenAI-style APIError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request

from thunder_middleware.security.auth import Authenticator
from thunder_middleware.security.config import SecurityConfig
from thunder_middleware.security.errors import AccessRefused
from thunder_middleware.security.limits import (
    DEFAULT_BODY_DEADLINE_S,
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    RequestLimits,
    TenantCaps,
)
from thunder_middleware.security.throttle import FailedKeyThrottle
from thunder_middleware.sidecar.errors import APIError
from thunder_middleware.sidecar.identity import is_anonymous_key, split_key
from thunder_middleware.sidecar.registry import ProgramRegistry


@dataclass(frozen=True, slots=True)
class RequestLimitSettings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    body_deadline_s: float = DEFAULT_BODY_DEADLINE_S

    def middleware_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`RequestLimits`, for every stack that installs it
        (FastAPI's, and the sidecar's raw completion path)."""
        return {"max_body_bytes": self.max_body_bytes,
                "max_header_bytes": self.max_header_bytes,
                "body_timeout_s": self.body_timeout_s,
                "body_deadline_s": self.body_deadline_s}


def as_api_error(refused: AccessRefused) -> APIError:
    return APIError(refused.status_code, refused.message, code=refused.code,
                    param=refused.param, retry_after=refused.retry_after)


def install_security(app: FastAPI, config: SecurityConfig,
                     limits: RequestLimitSettings | None = None,
                     throttle: FailedKeyThrottle | None = None) -> TenantCaps:
    """Make ``app`` authenticate callers and enforce limits; returns the caps to consult
    when a tenant starts a program or an environment."""
    authenticator = Authenticator(config, throttle)
    caps = TenantCaps(config)

    async def tenant_resolver(request: Request) -> str:
        address = request.client.host if request.client is not None else None
        try:
            return await authenticator.tenant_of(request.headers, address)
        except AccessRefused as refused:
            raise as_api_error(refused) from refused

    app.state.tenant_resolver = tenant_resolver
    app.state.authenticator = authenticator
    app.state.tenant_caps = caps
    limits = limits or RequestLimitSettings()
    app.add_middleware(RequestLimits, **limits.middleware_options())
    return caps


def tenant_admission(caps: TenantCaps, registry: ProgramRegistry,
                     environment_owners: Callable[[], Iterable[str]]
                     ) -> tuple[Callable[[str], None], Callable[[str], None]]:
    """The runtime's two admission hooks: may this program key start a program / an
    environment? Anonymous single-call programs are not counted: they end with their call."""

    def admit_program(key: str) -> None:
        if is_anonymous_key(key):
            return
        tenant = split_key(key)[0]
        live = sum(1 for program in registry.live.values()
                   if program.tenant == tenant and not program.anonymous)
        try:
            caps.admit_program(tenant, live)
        except AccessRefused as refused:
            raise as_api_error(refused) from refused

    def admit_environment(key: str) -> None:
        """May ``key`` own one more environment? A program that already owns one (a
        re-declaration replaces it, an exec reuses it) needs no new admission."""
        owners = list(environment_owners())
        if key in owners:
            return
        tenant = split_key(key)[0]
        owned = sum(1 for owner in owners if split_key(owner)[0] == tenant)
        try:
            caps.admit_environment(tenant, owned)
        except AccessRefused as refused:
            raise as_api_error(refused) from refused

    return admit_program, admit_environment
