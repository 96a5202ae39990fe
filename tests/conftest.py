"""Fixtures shared by every test package: real server processes on loopback ports.

Servers are started through the public CLI by :mod:`thunder_middleware.launch`, so the tests
exercise the same start-up a user runs. Fixtures that need a container engine fail (never
skip) in CI when none is found: a missing engine must turn CI red, not hide a feature.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from thunder_middleware.launch import RunningServer, start_sidecar, start_twin

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def twin_server() -> Iterator[RunningServer]:
    """One shared twin (H100 + Qwen3-8B, fast time scale) for tests that only read from it."""
    server = start_twin(time_scale=200.0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def small_twin() -> Iterator[RunningServer]:
    """A fresh twin with a tiny KV cache (64 blocks x 16 tokens), easy to put under pressure."""
    server = start_twin(time_scale=50.0, num_gpu_blocks=64, block_size=16)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sidecar_over_small_twin(small_twin: RunningServer) -> Iterator[RunningServer]:
    server = start_sidecar([small_twin.url])
    try:
        yield server
    finally:
        server.stop()


def require_docker_engine() -> None:
    """Fail in CI, skip with a clear reason elsewhere, when no Docker-API engine answers."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception as exc:
        message = (
            "no Docker-API container engine found (run `make engine`, or set DOCKER_HOST): "
            f"{exc!r}"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
