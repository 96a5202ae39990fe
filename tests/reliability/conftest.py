"""Fixtures of the reliability tests: one fast twin and a sidecar in front of it, per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sidecar.conftest import STRICT_POLICY, sidecar, twin
from thunder_middleware.launch import RunningServer, start_sidecar

# the strict policy's quick checks, with the local environment provider instead of none
LOCAL_PROVIDER = [*(flag for flag in STRICT_POLICY if flag not in ("--env-provider", "none")),
                  "--env-provider", "local"]


@pytest.fixture(scope="module")
def fast_twin() -> Iterator[RunningServer]:
    with twin(time_scale=500.0) as server:
        yield server


@pytest.fixture(scope="module")
def target(fast_twin: RunningServer) -> Iterator[RunningServer]:
    """A sidecar whose limits are small enough to hit cheaply in a test."""
    with sidecar([fast_twin.url], *STRICT_POLICY) as server:
        yield server


@pytest.fixture(scope="module")
def local_sidecar(fast_twin: RunningServer, env_root: Path) -> Iterator[RunningServer]:
    """A sidecar with the local environment provider, its environments under the module's
    own ``env_root`` fixture."""
    server = start_sidecar([fast_twin.url], extra_args=LOCAL_PROVIDER,
                           env={"THUNDER_ENV_ROOT": str(env_root)})
    try:
        yield server
    finally:
        server.stop()
