"""A minimal control-API app that mounts the environment router with simple hooks.

It stands in for the sidecar's program registry so the tool-environment tests do not depend
on the sidecar: programs are registered on first sight, released by ``POST /programs/release``,
and their tool time is kept per program. Run as a real uvicorn server:

    python tests/tools/env_app.py --port 8123 --provider local --root /tmp/envs
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from thunder_middleware.tools import (
    EnvironmentHooks,
    EnvironmentManager,
    ManagerConfig,
    environment_router,
    make_provider,
)


class ProgramBook:
    """Program state as the sidecar would keep it: live or terminated, plus tool time."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.tool_time: dict[str, list[tuple[float, float]]] = {}

    async def program_key(self, request: Request, program_id: str) -> str:
        tenant = request.headers.get("X-Tenant", "default")
        if tenant == "intruder":
            raise HTTPException(status_code=403, detail="tenant may not use this program")
        return f"{tenant}/{program_id}"

    def program_status(self, key: str) -> str | None:
        return self.status.get(key)

    async def ensure_program(self, key: str) -> None:
        self.status.setdefault(key, "live")

    def record_tool_time(self, key: str, started_at: float, duration_s: float) -> None:
        self.tool_time.setdefault(key, []).append((started_at, duration_s))

    def hooks(self) -> EnvironmentHooks:
        return EnvironmentHooks(self.program_key, self.program_status, self.ensure_program,
                                self.record_tool_time)


def build_app(manager: EnvironmentManager) -> FastAPI:
    book = ProgramBook()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        yield
        await manager.close()

    app = FastAPI(lifespan=lifespan)
    app.include_router(environment_router(manager, book.hooks()))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        body = {"message": str(exc.detail), "type": "invalid_request_error", "param": None,
                "code": str(exc.status_code)}
        return JSONResponse(status_code=exc.status_code, content={"error": body})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/programs/release")
    async def release(request: Request) -> dict[str, Any]:
        program_id = (await request.json())["program_id"]
        key = await book.program_key(request, program_id)
        book.status[key] = "terminated"
        report = await manager.reclaim(key, reason="release")
        return report.model_dump()

    @app.get("/programs/{program_id}")
    async def program(program_id: str, request: Request) -> dict[str, Any]:
        key = await book.program_key(request, program_id)
        return {
            "program_id": program_id,
            "status": book.status.get(key),
            "tool_time": book.tool_time.get(key, []),
            "environments": [h.model_dump(mode="json") for h in manager.describe(key)],
            "disk_bytes": manager.disk_of_program(key),
        }

    @app.get("/metrics")
    async def metrics() -> Any:
        from fastapi.responses import PlainTextResponse
        from prometheus_client import generate_latest

        return PlainTextResponse(generate_latest(manager.metrics.registry).decode())

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--provider", default="local")
    parser.add_argument("--root", default=None, help="local provider state directory")
    parser.add_argument("--idle-timeout", type=float, default=900.0)
    parser.add_argument("--max-live", type=int, default=64)
    args = parser.parse_args()
    options = {"root": Path(args.root)} if args.provider == "local" and args.root else {}
    manager = EnvironmentManager(
        make_provider(args.provider, **options),
        ManagerConfig(idle_timeout_s=args.idle_timeout, max_live=args.max_live,
                      gc_interval_s=0.2, disk_interval_s=0.5),
    )
    uvicorn.run(build_app(manager), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
