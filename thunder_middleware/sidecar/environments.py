"""The bridge between the sidecar and the tool-environment manager (contract 4).

Environments are optional: with ``--env-provider none`` (or when the provider cannot be
built) every environment route answers 501 with a clear message and nothing else changes.
When a manager exists, its router is mounted and :class:`EnvironmentHooks` connect it to the
runtime: tenant-namespaced keys, program status, registration on first sight and tool time
on the timeline. The runtime calls ``prepare`` and ``reclaim`` on program events.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from thunder_middleware.sidecar.errors import APIError
from thunder_middleware.sidecar.identity import namespaced, split_key, validate_program_id
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

    @router.get("/programs/{program_id}/environment")
    async def list_environments(program_id: str) -> None:
        raise _disabled()

    @router.put("/programs/{program_id}/environment")
    async def declare_environment(program_id: str) -> None:
        raise _disabled()

    @router.delete("/programs/{program_id}/environment")
    async def remove_environment(program_id: str) -> None:
        raise _disabled()

    @router.post("/programs/{program_id}/exec")
    async def exec_in_environment(program_id: str) -> None:
        raise _disabled()

    return router


class EnvironmentLink:
    """An optional EnvironmentManager plus the router and hooks that expose it."""

    def __init__(self, manager: Any | None = None, hooks: Any | None = None,
                 presets: dict[str, Any] | None = None) -> None:
        self.manager = manager
        self.hooks = hooks
        self._presets = presets

    @property
    def presets(self) -> dict[str, Any]:
        """The named EnvSpecs this sidecar knows: bundled, then --env-presets over them."""
        if self._presets is None:
            from thunder_middleware.tools import default_presets

            self._presets = default_presets()
        return self._presets

    @property
    def enabled(self) -> bool:
        return self.manager is not None

    def router(self) -> APIRouter:
        if self.manager is None or self.hooks is None:
            return disabled_router()
        from thunder_middleware.tools import environment_router

        router: APIRouter = environment_router(self.manager, self.hooks, self.presets)
        return router

    def install_error_handler(self, app: FastAPI) -> None:
        """Environment errors (bad spec 400, unknown preset, engine down...) as OpenAI JSON."""
        if self.manager is None:
            return
        from thunder_middleware.tools import ToolEnvironmentError, error_response

        async def handle(_: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, ToolEnvironmentError)
            return error_response(exc)

        app.add_exception_handler(ToolEnvironmentError, handle)

    async def start(self) -> None:
        if self.manager is not None:
            reaped = await self.manager.start()
            log.info("environments: %s provider, orphans reaped: %s",
                        self.manager.provider.name, reaped)

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.close()

    async def resolve(self, spec: dict[str, Any] | None, preset: str | None) -> Any:
        """The EnvSpec of a registration's ``environment``/``preset``, checked by the provider
        (a 400 for a bad one). Declares nothing: a refusal leaves nothing behind."""
        if self.manager is None:
            raise _disabled()
        from thunder_middleware.tools import resolve_spec

        body: dict[str, Any] = dict(spec or {})
        if preset is not None:
            body["preset"] = preset
        resolved = resolve_spec(body, self.presets)
        await self.manager.validate(resolved)
        return resolved

    async def declare(self, key: str, spec: Any) -> Any:
        """Declare (and start preparing at once) an environment :meth:`resolve` returned."""
        if self.manager is None:
            raise _disabled()
        return await self.manager.declare(key, spec, validated=True)


def make_hooks(runtime: SchedulerRuntime, max_length: int) -> Any:
    """The hooks the environment router needs, implemented on the runtime: an exec's start
    and end are program activity (idle expiry), its duration is tool time on the timeline."""
    from thunder_middleware.tools import EnvironmentHooks

    async def program_key(request: Request, program_id: str) -> str:
        tenant = await resolve_tenant(request)
        return namespaced(tenant, validate_program_id(program_id, "program_id", max_length))

    async def ensure_program(key: str) -> None:
        # the program cap, then the environment cap (none for a program that already owns
        # one), then the registration: a 429 leaves nothing behind
        runtime.admit(key, environment=True)
        if key not in runtime.registry.live:
            runtime.register(key)

    def record_tool_time(key: str, started_at: float, duration_s: float) -> None:
        runtime.tool_finished(key, duration_s)

    return EnvironmentHooks(program_key=program_key, program_status=runtime.program_status,
                            ensure_program=ensure_program, record_tool_time=record_tool_time,
                            tool_started=runtime.tool_started,
                            may_declare=runtime.require_writable_store,
                            environment_declared=runtime.environment_declared)


class PresetFileError(ValueError):
    """--env-presets names a file that cannot be read or holds an invalid preset."""


def load_env_presets(path: Path | None) -> dict[str, Any]:
    """The bundled presets with those of ``path`` (same format as tools/presets.toml) merged
    over them, so a deployment can add or redefine presets without touching the package.

    Raises PresetFileError with a one-line reason: a bad file must stop start-up clearly.
    """
    from thunder_middleware.tools import InvalidSpec, default_presets, load_presets

    presets = default_presets()
    if path is None:
        return presets
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
        tables = document.get("presets", document)
        if not isinstance(tables, dict) or not all(isinstance(table, dict)
                                                   for table in tables.values()):
            raise PresetFileError(f"{path}: expected [presets.<name>] tables of EnvSpec fields")
        extra = load_presets(path)
    except OSError as exc:
        raise PresetFileError(f"cannot read environment presets {path}: "
                              f"{exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PresetFileError(f"{path} is not valid TOML: {exc}") from exc
    except InvalidSpec as exc:
        raise PresetFileError(exc.message) from exc
    return presets | extra


def manager_config(settings: SidecarSettings) -> Any:
    """The environment manager's knobs (``ManagerConfig``) from the sidecar's settings."""
    from thunder_middleware.tools import ManagerConfig

    return ManagerConfig(
        max_live=settings.max_environments,
        prepare_concurrency=settings.env_create_concurrency,
        create_attempts=settings.env_create_attempts,
        idle_timeout_s=settings.env_idle_timeout or None,
        ready_wait_timeout_s=settings.env_ready_timeout,
        default_exec_timeout_s=settings.env_exec_timeout,
        max_exec_timeout_s=settings.env_max_exec_timeout,
        output_limit=settings.env_output_limit,
        port_range=settings.env_port_range,
    )


def provider_options(settings: SidecarSettings) -> dict[str, Any]:
    """Keyword arguments of ``make_provider(settings.env_provider, ...)``."""
    if settings.env_provider == "kubernetes":
        return {"namespace": settings.k8s_namespace}
    return {}


class ProviderUnavailable(RuntimeError):
    """The configured environment provider cannot be reached (no engine, no cluster)."""


def environment_link_for(settings: SidecarSettings, runtime: SchedulerRuntime,
                         registry: CollectorRegistry | None = None) -> EnvironmentLink:
    """Build the manager for ``settings.env_provider``; disabled when it is 'none'."""
    if settings.env_provider == "none":
        return EnvironmentLink()
    from thunder_middleware.tools import EnvironmentManager, make_provider

    try:
        provider = make_provider(settings.env_provider, **provider_options(settings))
    except Exception as exc:  # the SDKs raise their own types for "nothing to talk to"
        raise ProviderUnavailable(
            f"--env-provider {settings.env_provider}: cannot reach it ({exc}); start the "
            "engine (make engine), set DOCKER_HOST / KUBECONFIG, or use --env-provider local "
            "or none") from exc
    manager = EnvironmentManager(
        provider,
        manager_config(settings),
        registry=registry,
        program_status=runtime.program_status,
        exec_path=lambda key: f"/programs/{split_key(key)[1]}/exec",
    )
    return EnvironmentLink(manager, make_hooks(runtime, settings.max_program_id_length),
                           load_env_presets(settings.env_presets))
