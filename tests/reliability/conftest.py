"""Fixtures of the reliability tests: one fast twin and a sidecar in front of it, per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sidecar.conftest import STRICT_POLICY, sidecar, twin
from thunder_middleware.launch import RunningServer


@pytest.fixture(scope="module")
def fast_twin() -> Iterator[RunningServer]:
    with twin(time_scale=500.0) as server:
        yield server


@pytest.fixture(scope="module")
def target(fast_twin: RunningServer) -> Iterator[RunningServer]:
    """A sidecar whose limits are small enough to hit cheaply in a test."""
    with sidecar([fast_twin.url], *STRICT_POLICY) as server:
        yield server
