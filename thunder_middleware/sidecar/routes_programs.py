"""The control API for programs: register early, release, list, inspect.

Routes speak the caller's own program ids; the tenant prefix is added on the way in and
removed on the way out, so one tenant can never name another's programs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from thunder_middleware.sidecar.errors import APIError, not_found
from thunder_middleware.sidecar.identity import namespaced, validate_program_id
from thunder_middleware.sidecar.registry import TrackedProgram
from thunder_middleware.sidecar.runtime import SchedulerRuntime, as_plain_dict
from thunder_middleware.sidecar.tenancy import resolve_tenant

router = APIRouter()


class RegisterProgram(BaseModel):
    model_config = ConfigDict(extra="forbid")

    program_id: str = Field(min_length=1)
    environment: dict[str, Any] | None = None
    preset: str | None = None


class ReleaseProgram(BaseModel):
    model_config = ConfigDict(extra="ignore")

    program_id: str = Field(min_length=1)


def describe(runtime: SchedulerRuntime, program: TrackedProgram, *,
             timeline: bool) -> dict[str, Any]:
    """A program as the control API shows it (caller-visible id, no tenant prefix)."""
    view = runtime.program_view(program.key)
    live = program.terminated_reason is None
    described: dict[str, Any] = {
        "program_id": program.program_id,
        "status": "terminated" if not live else (str(view.status) if view else "registered"),
        "phase": str(view.phase) if view and live else None,
        "backend": view.backend if view and live else None,
        "context_tokens": view.c if view else None,
        "marked_for_pause": view.marked_for_pause if view and live else False,
        "waiting_requests": view.waiting_requests if view and live else 0,
        "inflight_requests": view.inflight_requests if view and live else 0,
        "created_at": program.created_at,
        "last_activity": program.last_activity,
        "pauses": program.pauses,
        "restores": program.restores,
        "migrations": program.migrations,
        "last_backend": program.last_backend,
        "terminated_reason": program.terminated_reason,
        "summary": program.timeline.summary(),
        "environments": [],
    }
    if runtime.environments is not None:
        described["environments"] = [
            {**as_plain_dict(handle), "program_id": program.program_id}
            for handle in runtime.environments.describe(program.key)
        ]
    if timeline:
        described["timeline"] = program.timeline.as_list()
    return described


def _runtime(request: Request) -> SchedulerRuntime:
    runtime: SchedulerRuntime = request.app.state.runtime
    return runtime


def _max_len(request: Request) -> int:
    return int(request.app.state.settings.max_program_id_length)


@router.post("/programs")
async def register_program(body: RegisterProgram, request: Request,
                           tenant: str = Depends(resolve_tenant)) -> dict[str, Any]:
    """Register a program before its first call, preparing its environment at once."""
    runtime = _runtime(request)
    runtime.require_writable_store()
    program_id = validate_program_id(body.program_id, "program_id", _max_len(request))
    key = namespaced(tenant, program_id)
    wants_environment = body.environment is not None or body.preset is not None
    if wants_environment and runtime.environments is None:
        raise APIError(501, "no environment provider is configured (--env-provider none)",
                       param="environment", code="environments_disabled")
    link = request.app.state.environment_link
    resolved = None
    if wants_environment:  # validate the spec before the program exists: a 400 leaks nothing
        resolved = await link.resolve(body.environment, body.preset)
    # the program cap, then the environment cap, before anything exists: a 429 leaks nothing
    # (no await from here to the declaration's record, so no other admission comes between)
    runtime.admit(key, environment=wants_environment)
    fresh = key not in runtime.registry.live
    spec = body.environment if body.environment is not None else {"preset": body.preset}
    program = runtime.register(key, spec if wants_environment else None)
    if resolved is not None:
        try:
            await link.declare(key, resolved)
        except BaseException:
            if fresh:
                runtime.forget(key)
            raise
    return describe(runtime, program, timeline=False)


@router.post("/programs/release")
async def release_program(body: ReleaseProgram, request: Request,
                          tenant: str = Depends(resolve_tenant)) -> dict[str, Any]:
    """End a program and reclaim everything it owns.

    The answer is final: it waits for the environment reclaim (bounded by
    ``release_timeout``), so what it shows, and what a GET right after shows, is the state
    after cleanup. A reclaim still running at the bound finishes in the background and the
    answer says ``"status": "pending"``.
    """
    runtime = _runtime(request)
    runtime.require_writable_store()
    program_id = validate_program_id(body.program_id, "program_id", _max_len(request))
    key = namespaced(tenant, program_id)
    program = runtime.release(key)
    finished, report = await runtime.finish_reclaim(
        key, float(request.app.state.settings.release_timeout))
    described = describe(runtime, program, timeline=False)
    described["reclaim"] = reclaim_outcome(program_id, finished, report)
    return described


def reclaim_outcome(program_id: str, finished: bool, report: Any) -> dict[str, Any] | None:
    """What the release reclaimed (None: environments are off or the program had none)."""
    if not finished:
        return {"status": "pending", "program_id": program_id,
                "message": "the environment reclaim is still running; it finishes in the "
                           "background (GET /programs/{id} shows the outcome)"}
    if report is None:
        return None
    return {**as_plain_dict(report), "program_id": program_id, "status": "done"}


@router.get("/programs")
async def list_programs(request: Request, tenant: str = Depends(resolve_tenant),
                        program_id: str | None = None) -> dict[str, Any]:
    """Every program of the caller; with ``?program_id=``, that one program (as
    ``GET /programs/{id}`` answers it): the form that takes any valid id, ``task/42`` too,
    which a path segment cannot hold."""
    runtime = _runtime(request)
    if program_id is not None:
        return _one_program(request, tenant, program_id)
    programs = [describe(runtime, program, timeline=False)
                for program in runtime.registry.of_tenant(tenant) if not program.anonymous]
    return {"object": "list", "data": programs}


@router.get("/programs/{program_id}")
async def get_program(program_id: str, request: Request,
                      tenant: str = Depends(resolve_tenant)) -> dict[str, Any]:
    return _one_program(request, tenant, program_id)


def _one_program(request: Request, tenant: str, program_id: str) -> dict[str, Any]:
    runtime = _runtime(request)
    program_id = validate_program_id(program_id, "program_id", _max_len(request))
    program = runtime.registry.get(namespaced(tenant, program_id))
    if program is None:
        raise not_found(f"no program {program_id!r}", param="program_id")
    return describe(runtime, program, timeline=True)
