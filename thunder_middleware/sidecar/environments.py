"""The bridge between the sidecar and the tool-environment manager (contract 4).

Environments are optional: with ``--env-provider none`` (or when the provider cannot be
built) every environment route answers 501 with a clear message and nothing else changes.
When a manager exists, its router is mounted and the hooks below connect it to the
runtime: tenant-namespaced keys, program status, registration on first sight and tool time
on the timeline.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request

from thunder_middleware.sidecar.errors import APIError
from thunder_middleware.sidecar.identity import namespaced, validate_program_id
from thunder_middleware.sidecar.runtime import SchedulerRuntime
from thunder_middleware.sidecar.settings import SidecarSettings
from thunder_middleware.sidecar.tenancy import resolve_tenant

log = logging.getLogger(__name__)


def _disabled() -> APIError:
    return APIError(501, "no environment provider is configured (--env-provider none)",
                    code="environments_disabled")


def disabled_router() -> APIRouter:
    """The environment routes of contract 3, answering 501 when environments are off."""
    router = APIRouter()

    @router.put("/programs/{program_id}/environment")
    async def declare_environment(program_id: str) -> None:
        raise _disabled()

    @router.post("/programs/{program_id}/tool-intent")
    async def tool_intent(program_id: str) -> None:
        raise _disabled()

    @router.post("/programs/{program_id}/exec")
    async def exec_in_environment(program_id: str) -> None:
        raise _disabled()

    return router


class EnvironmentLink:
    """An optional EnvironmentManager plus the router and hooks that expose it."""

    def __init__(self, manager: Any | None = None, hooks: Any | None = None,
                 router_factory: Any | None = None) -> None:
        self.manager = manager
        self.hooks = hooks
        self._router_factory = router_factory

    @property
    def enabled(self) -> bool:
        return self.manager is not None

    def router(self) -> APIRouter:
        if self.manager is None or self._router_factory is None:
            return disabled_router()
        router: APIRouter = self._router_factory(self.manager, self.hooks)
        return router

    async def start(self) -> None:
        if self.manager is not None:
            await self.manager.start()

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.close()

    async def declare_and_prepare(self, key: str, spec: dict[str, Any] | None,
                                  preset: str | None) -> None:
        if self.manager is None:
            raise _disabled()
        await self.manager.declare(key, _env_spec(spec, preset))
        await self.manager.prepare(key)


def _env_spec(spec: dict[str, Any] | None, preset: str | None) -> Any:
    from thunder_middleware.tools import specs

    body: dict[str, Any] = dict(spec or {})
    if preset is not None:
        body["preset"] = preset
    return specs.resolve_spec(body, specs.default_presets())


def program_key_hook(runtime: SchedulerRuntime, max_length: int) -> Any:
    async def program_key(request: Request, program_id: str) -> str:
        tenant = await resolve_tenant(request)
        return namespaced(tenant, validate_program_id(program_id, "program_id", max_length))

    return program_key


def environment_link_for(settings: SidecarSettings, runtime: SchedulerRuntime) -> EnvironmentLink:
    """Build the manager for ``settings.env_provider``; disabled when it is 'none'."""
    if settings.env_provider == "none":
        return EnvironmentLink()
    try:
        from thunder_middleware.tools import router as tools_router  # noqa: F401
    except ImportError as exc:
        log.warning("environments disabled: the tools package is not available (%s)", exc)
        return EnvironmentLink()
    return EnvironmentLink()
