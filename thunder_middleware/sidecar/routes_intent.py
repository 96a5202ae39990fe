"""``POST /programs/{id}/tool-intent``: a live program is about to run tools.

Tool intent is a scheduling signal first and an environment trigger second. It is accepted
for any live program, with or without an environment: the runtime records the tools and
the acting period (per step, and in the per-tool-name estimate); where the program has an
environment, it is readied too. A program the sidecar has never seen is a 404 unless it has
an environment to prepare (then the intent registers it, as an exec would); a released one
is a 409. This route is mounted before the environment router, so it is the one that
answers in the sidecar (the environment router's own intent route serves apps without one).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from thunder_middleware.sidecar.errors import APIError, not_found
from thunder_middleware.sidecar.identity import namespaced, validate_program_id
from thunder_middleware.sidecar.runtime import SchedulerRuntime, as_plain_dict
from thunder_middleware.sidecar.tenancy import resolve_tenant

router = APIRouter()


class IntendedTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=256)
    arguments: Any = None  # advisory: the environment provider may use it, the policy not


class ToolIntentBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tools: list[IntendedTool] = Field(default_factory=list, max_length=256)


@router.post("/programs/{program_id}/tool-intent")
async def tool_intent(program_id: str, body: ToolIntentBody, request: Request,
                      tenant: str = Depends(resolve_tenant)) -> dict[str, Any]:
    runtime: SchedulerRuntime = request.app.state.runtime
    metrics = request.app.state.metrics
    program_id = validate_program_id(program_id, "program_id",
                                     int(request.app.state.settings.max_program_id_length))
    key = namespaced(tenant, program_id)
    manager = request.app.state.environment_link.manager
    has_environment = manager is not None and manager.has_environment(key)
    if key not in runtime.registry.live:
        if runtime.program_status(key) == "terminated":
            metrics.tool_intents.labels(outcome="rejected").inc()
            raise APIError(409, f"program {program_id!r} was released; a new call of it "
                           "makes it live again", param="program_id", code="program_released")
        if not has_environment:
            metrics.tool_intents.labels(outcome="rejected").inc()
            raise not_found(f"no live program {program_id!r}: a program becomes live with "
                            "its first chat call (or POST /programs)", param="program_id")
        runtime.admit(key, environment=True)  # the caps first: a 429 registers nothing
        runtime.register(key)
    names = [tool.name for tool in body.tools]
    handle = await manager.tool_intent(key, names) if has_environment else None
    runtime.tool_intent(key, names, prepared=handle is not None)
    environment = None
    if handle is not None:
        environment = {**as_plain_dict(handle), "program_id": program_id,
                       "exec_path": f"/programs/{program_id}/exec"}
    return {"object": "tool_intent", "program_id": program_id, "tools": names,
            "acting": True, "environment": environment}
