"""Fixtures for the tool-environment tests: managers over real providers, a real app server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_docker_engine
from tests.tools.envtest import fast_config, running_manager, start_env_app
from thunder_middleware.launch import RunningServer
from thunder_middleware.tools import EnvironmentManager, LocalProvider


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    root = tmp_path / "envs"
    root.mkdir()
    return root


@pytest.fixture
async def local_manager(local_root: Path) -> AsyncIterator[EnvironmentManager]:
    async with running_manager(LocalProvider(local_root), fast_config()) as manager:
        yield manager


@pytest.fixture
def docker_engine() -> None:
    require_docker_engine()


@pytest.fixture
async def docker_manager(docker_engine: None) -> AsyncIterator[EnvironmentManager]:
    from thunder_middleware.tools.providers.docker import DockerProvider

    async with running_manager(DockerProvider(), fast_config()) as manager:
        yield manager


@pytest.fixture(scope="module")
def app_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("app-envs")


@pytest.fixture(scope="module")
def local_app(app_root: Path) -> Iterator[RunningServer]:
    """One env app (local provider) per test module: starting uvicorn costs seconds."""
    server = start_env_app("--provider", "local", "--root", str(app_root),
                           "--idle-timeout", "600")
    try:
        yield server
    finally:
        server.stop()
