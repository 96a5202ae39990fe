"""Helpers shared by the tool-environment tests (import as ``tests.tools.envtest``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from thunder_middleware.launch import RunningServer, free_port
from thunder_middleware.tools import (
    EnvironmentManager,
    EnvironmentProvider,
    EnvState,
    ManagerConfig,
)

APP = Path(__file__).with_name("env_app.py")
TEST_IMAGE = "localhost/thunder-test:latest"
_port_blocks = itertools.count(0)


def port_range() -> tuple[int, int]:
    """A distinct block of the pool range per manager, so managers alive at once never share."""
    start = 21000 + (next(_port_blocks) % 60) * 100
    return start, start + 99


def fast_config(**overrides: object) -> ManagerConfig:
    config = ManagerConfig(idle_timeout_s=None, gc_interval_s=0.1, disk_interval_s=0.2,
                           port_range=port_range(), ready_wait_timeout_s=60)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@contextlib.asynccontextmanager
async def running_manager(provider: EnvironmentProvider,
                          config: ManagerConfig) -> AsyncIterator[EnvironmentManager]:
    """A started manager, closed (its environments reclaimed) however the test ends, so a
    failing test leaks no container, process or port into the next."""
    manager = EnvironmentManager(provider, config)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.close()


async def wait_state(manager: EnvironmentManager, key: str, state: EnvState,
                     timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        handles = manager.describe(key)
        if handles and handles[0].state is state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} never reached {state}: {manager.describe(key)}")


def start_env_app(*args: str, timeout: float = 30.0) -> RunningServer:
    """Run tests/tools/env_app.py as a real uvicorn server and wait for /health."""
    port = free_port()
    log_path = Path(f"/tmp/thunder-logs/env-app-{port}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, str(APP), "--port", str(port), *args],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = RunningServer("env-app", f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"env app exited:\n{server.log_tail()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise TimeoutError(f"env app not ready:\n{server.log_tail()}")
