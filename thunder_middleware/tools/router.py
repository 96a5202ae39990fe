"""The control-API routes that touch tool environments (contract 3), as a mountable router.

The sidecar owns identity and program state; it lends them through ``EnvironmentHooks`` so this
router never imports the sidecar. Bodies are parsed here (not by FastAPI's validation) so every
bad input is an OpenAI-style 400, whatever app mounts the router.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from thunder_middleware.tools.errors import (
    InvalidSpec,
    NoEnvironment,
    ProgramReleased,
    ToolEnvironmentError,
)
from thunder_middleware.tools.handles import EnvHandle
from thunder_middleware.tools.manager import EnvironmentManager
from thunder_middleware.tools.specs import (
    EnvSpec,
    check_command,
    check_env,
    check_text,
    default_presets,
    resolve_spec,
)


@dataclass
class EnvironmentHooks:
    program_key: Callable[[Request, str], Awaitable[str]]  # raises HTTPException itself
    program_status: Callable[[str], str | None]  # "live" | "terminated" | None (unknown)
    # register a program on first sight, admitted (caps) to own an environment; it runs only
    # once the request is known to succeed, so an error answer registers nothing
    ensure_program: Callable[[str], Awaitable[None]]
    record_tool_time: Callable[[str, float, float], None]  # (key, started_at, duration_s)
    # an exec began (its end is record_tool_time): lets the owner see a long tool as activity
    tool_started: Callable[[str], None] | None = None
    # before a declaration: raises (the owner's own error type) when it cannot be kept
    may_declare: Callable[[], None] | None = None
    # after a declaration succeeded, with the body that declared it: the owner persists it
    environment_declared: Callable[[str, dict[str, Any]], None] | None = None


class ExecRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    command: list[str] | str = Field(..., min_length=1)
    timeout_s: float | None = Field(None, gt=0)
    workdir: str | None = None
    env: dict[str, str] | None = None

    # what reaches the OS (argv, cwd, environment) is checked here, so a bad exec is a 400
    @field_validator("command")
    @classmethod
    def _valid_command(cls, value: list[str] | str) -> list[str] | str:
        check_command(value, "command")
        return value

    @field_validator("workdir")
    @classmethod
    def _valid_workdir(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value, "workdir")

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_env(value)


class ToolCall(BaseModel):
    name: str = Field(..., min_length=1)
    arguments: Any = None


class ToolIntentRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tools: list[ToolCall] = Field(default_factory=list)


def error_response(error: ToolEnvironmentError) -> JSONResponse:
    return JSONResponse(status_code=error.status_code, content=error.to_body())


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise InvalidSpec("the request body must be a JSON object")
    try:
        # orjson refuses nesting deeper than 1024 levels with a decode error, where the
        # standard parser recurses until RecursionError
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidSpec(f"the request body is not valid JSON: {exc}") from exc


def _model(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error.get("loc", ())) or None
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        raise InvalidSpec(f"{param}: {message}", param=param) from exc


def environment_router(
    manager: EnvironmentManager,
    hooks: EnvironmentHooks,
    presets: dict[str, EnvSpec] | None = None,
) -> APIRouter:
    known_presets = default_presets() if presets is None else presets
    router = APIRouter(tags=["environments"])

    async def live_key(request: Request, program_id: str) -> str:
        key = await hooks.program_key(request, program_id)
        if hooks.program_status(key) == "terminated":
            raise ProgramReleased(f"program {program_id!r} was released; its environment is gone")
        return key

    def public(handle: EnvHandle, program_id: str) -> dict[str, Any]:
        return handle.model_copy(
            update={"program_id": program_id, "exec_path": f"/programs/{program_id}/exec"}
        ).model_dump(mode="json")

    @router.put("/programs/{program_id}/environment")
    async def declare_environment(program_id: str, request: Request) -> JSONResponse:
        try:
            key = await live_key(request, program_id)
            body = await _json_body(request)
            spec = resolve_spec(body, known_presets)
            await manager.validate(spec)  # a 400 before the program is registered
            if hooks.may_declare is not None:
                hooks.may_declare()
            await hooks.ensure_program(key)
            handle = await manager.declare(key, spec, validated=True)
            if hooks.environment_declared is not None and isinstance(body, dict):
                hooks.environment_declared(key, body)
            return JSONResponse(public(handle, program_id))
        except ToolEnvironmentError as exc:
            return error_response(exc)

    @router.get("/programs/{program_id}/environment")
    async def list_environments(program_id: str, request: Request) -> JSONResponse:
        key = await hooks.program_key(request, program_id)
        handles = [public(handle, program_id) for handle in manager.describe(key)]
        return JSONResponse({"object": "list", "data": handles})

    @router.delete("/programs/{program_id}/environment")
    async def remove_environment(program_id: str, request: Request) -> JSONResponse:
        key = await hooks.program_key(request, program_id)
        report = await manager.reclaim(key, reason="removed")
        return JSONResponse(report.model_copy(update={"program_id": program_id}).model_dump())

    @router.post("/programs/{program_id}/tool-intent")
    async def tool_intent(program_id: str, request: Request) -> JSONResponse:
        try:
            key = await live_key(request, program_id)
            intent = _model(ToolIntentRequest, await _json_body(request))
            if manager.has_environment(key):  # a 404 (or 409) intent registers nothing
                await hooks.ensure_program(key)
            handle = await manager.tool_intent(key, [tool.name for tool in intent.tools])
            if handle is None:
                raise NoEnvironment(f"program {program_id!r} has no environment declared")
            return JSONResponse(public(handle, program_id))
        except ToolEnvironmentError as exc:
            return error_response(exc)

    @router.post("/programs/{program_id}/exec")
    async def exec_command(program_id: str, request: Request) -> JSONResponse:
        try:
            key = await live_key(request, program_id)
            body = _model(ExecRequest, await _json_body(request))
            manager.exec_arguments(body.command, body.timeout_s)  # a 400 registers nothing
            if manager.has_environment(key):
                await hooks.ensure_program(key)  # no registration by a 404 or 409 exec
            started_at, started = time.time(), time.monotonic()
            if hooks.tool_started is not None:
                hooks.tool_started(key)
            try:
                result = await manager.exec(key, body.command, timeout_s=body.timeout_s,
                                            workdir=body.workdir, env=body.env)
            finally:
                hooks.record_tool_time(key, started_at, time.monotonic() - started)
            return JSONResponse(result.model_dump())
        except ToolEnvironmentError as exc:
            return error_response(exc)

    return router
