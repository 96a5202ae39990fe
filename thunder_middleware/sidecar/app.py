"""The sidecar application: wiring of settings, policy, backends, runtime and routes.

``create_app`` builds everything from settings; the lifespan starts backend monitoring, the
policy tick and the environment manager, and stops them in reverse order on shutdown
(uvicorn drains in-flight requests before the lifespan ends).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from thunder_middleware.policy import PolicyConfig, ProgramScheduler
from thunder_middleware.policy.tenant_share import TenantShare
from thunder_middleware.security.config import SecurityConfig, merge_api_keys
from thunder_middleware.security.install import (
    RequestLimitSettings,
    install_security,
    tenant_admission,
)
from thunder_middleware.security.throttle import FailedKeyThrottle
from thunder_middleware.sidecar.backends.pool import BackendPool, make_client, make_session
from thunder_middleware.sidecar.docs import HIDDEN_DOCS, guarded_docs_router
from thunder_middleware.sidecar.environments import EnvironmentLink, environment_link_for
from thunder_middleware.sidecar.errors import install_error_handlers
from thunder_middleware.sidecar.fast_path import SidecarApp, completion_stack
from thunder_middleware.sidecar.metrics import SidecarMetrics, StateCollector
from thunder_middleware.sidecar.persistence import InMemoryProgramStore, ProgramStore
from thunder_middleware.sidecar.proxy import Proxy
from thunder_middleware.sidecar.routes_intent import router as intent_router
from thunder_middleware.sidecar.routes_openai import router as openai_router
from thunder_middleware.sidecar.routes_programs import router as programs_router
from thunder_middleware.sidecar.runtime import SchedulerRuntime
from thunder_middleware.sidecar.settings import SidecarSettings
from thunder_middleware.sidecar.store_guard import GuardedStore
from thunder_middleware.sidecar.tenant_gate import TenantGate
from thunder_middleware.store.restore import redeclare_environments, restore_registry

log = logging.getLogger(__name__)


def policy_config(settings: SidecarSettings) -> PolicyConfig:
    """The sidecar's policy knobs, in the policy's own terms (policy seconds)."""
    return PolicyConfig(
        tick_interval_s=settings.check_interval,
        decay_base=settings.decay_base,
        decay_tool_halflives=settings.tool_halflives,
        lambda_min=settings.lambda_min,
        lambda_max=settings.lambda_max,
        starvation_bound_s=settings.starvation_bound,
        idle_timeout_s=settings.idle_timeout,
        cost_aware=settings.cost_aware,
        self_check=settings.self_check,
    )


def security_config(settings: SidecarSettings) -> SecurityConfig:
    """Tenants from [[tenants]] plus THUNDER_API_KEYS; none configured = auth off."""
    config = SecurityConfig(tenants=list(settings.tenants),
                            default_max_programs=settings.max_programs_per_tenant,
                            default_max_environments=settings.max_environments_per_tenant)
    return merge_api_keys(config, settings.api_keys or "")


def open_store(settings: SidecarSettings) -> ProgramStore:
    """SQLite under --state-dir when given (programs survive a restart), else memory."""
    if settings.state_dir is None:
        return InMemoryProgramStore()
    from thunder_middleware.store import SQLiteProgramStore

    return SQLiteProgramStore(settings.state_dir)


def create_app(
    settings: SidecarSettings,
    *,
    store: ProgramStore | None = None,
    environment_link: EnvironmentLink | None = None,
) -> SidecarApp:
    """Build the sidecar; ``store`` and ``environment_link`` are the plug-in points."""
    metrics = SidecarMetrics()
    pool = BackendPool(
        settings.backends, make_client(settings.connect_timeout), kind=settings.backend_kind,
        capacity_tokens=settings.backend_capacity, metrics_interval=settings.metrics_interval,
        session_factory=lambda: make_session(settings.max_connections, settings.request_timeout,
                                             settings.connect_timeout, settings.backend_api_key),
    )
    guarded = GuardedStore(store or open_store(settings), metrics.store_degraded,
                           metrics.store_write_failures)
    runtime = SchedulerRuntime(
        ProgramScheduler(policy_config(settings)), pool, metrics,
        guarded, time_scale=settings.time_scale,
        tick_interval_s=settings.check_interval, idle_timeout_s=settings.idle_timeout,
        prep_ahead=settings.prep_ahead, max_tool_names=settings.max_tool_names,
        # the upstream read timeout ends any call still talking to its backend by then
        call_deadline_s=settings.request_timeout + settings.connect_timeout,
    )
    link = environment_link if environment_link is not None else environment_link_for(
        settings, runtime, metrics.registry)
    runtime.environments = link.manager if link.enabled else None
    security = security_config(settings)
    tenants = [tenant for tenant in security.tenants if tenant.keys]
    if settings.tenant_fair_share and len(tenants) >= 2:
        runtime.tenant_gate = TenantGate(
            TenantShare({tenant.name: tenant.weight for tenant in tenants},
                         settings.tenant_max_inflight),
            lambda: sum(view.capacity_tokens for view in
                        runtime.scheduler.backend_views(runtime.now()) if view.healthy))
    restored = restore_registry(runtime.registry, runtime.store.load(), runtime.store.load_steps)
    if restored.live or restored.ended:
        log.info("restored %d live and %d ended programs from the store", restored.live,
                    restored.ended)
    if restored.skipped:
        log.error("skipped %d corrupt stored programs (see the errors above)", restored.skipped)
    metrics.attach_state(StateCollector(
        programs=runtime.scheduler.programs,
        backends=lambda: runtime.scheduler.backend_views(runtime.now()),
        engine_metrics=lambda: {name: (pool.is_healthy(name), backend.metrics)
                                for name, backend in pool.backends.items()},
        waiting=runtime.gates.waiting_count,
        hit_rate=metrics.observed_hit_rate,
    ))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        await link.start()
        if link.enabled:
            await redeclare_environments(link.manager, runtime.registry, link.presets)
        try:
            yield
        finally:
            await link.close()
            await runtime.close()

    guard_docs = security_config(settings).auth_enabled and not settings.public_docs
    app = SidecarApp(title="thunder-middleware sidecar", lifespan=lifespan,
                     **(HIDDEN_DOCS if guard_docs else {}))
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.proxy = Proxy(runtime, metrics)
    app.state.environment_link = link
    install_error_handlers(app)
    limits = RequestLimitSettings(settings.max_body_bytes, settings.max_header_bytes,
                                  settings.body_timeout, settings.body_deadline)
    caps = install_security(app, security_config(settings), limits, FailedKeyThrottle(
        settings.failed_key_burst, settings.failed_key_rate))
    if guard_docs:
        app.include_router(guarded_docs_router(app))
    app.completion_path = completion_stack(metrics, limits)
    runtime.admit_program, runtime.admit_environment = tenant_admission(
        caps, runtime.registry,
        lambda: link.manager.live_programs() if link.manager is not None else [])
    link.install_error_handler(app)
    app.include_router(openai_router)
    app.include_router(programs_router)
    app.include_router(intent_router)  # before the environment routes: it answers intents
    app.include_router(link.router())

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health(request: Request) -> JSONResponse:
        """200 while the sidecar runs (liveness); ``status`` says whether work can flow."""
        views = {view.name: view for view in runtime.scheduler.backend_views(runtime.now())}
        down = pool.down_reasons()
        backends: list[dict[str, Any]] = []
        for url in pool.urls:
            backend = pool.backends.get(url)
            view = views.get(url)
            backends.append({
                "url": url,
                "kind": backend.kind if backend else None,
                "healthy": pool.is_healthy(url),
                "reason": down.get(url),  # why it is down (None when healthy)
                "capacity_tokens": view.capacity_tokens if view else None,
                "demand_tokens": round(view.demand, 1) if view else None,
                "programs": view.programs if view else 0,
            })
        status = "ok" if pool.any_healthy() else "degraded"
        return JSONResponse({"status": status, "backends": backends,
                             "programs": len(runtime.registry.live),
                             "waiting_requests": runtime.gates.waiting_count(),
                             "asyncio_tasks": len(asyncio.all_tasks()),
                             "environments": link.enabled})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
