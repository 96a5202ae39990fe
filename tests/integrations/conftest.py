"""One real stack (engine twin + sidecar, separate processes over loopback HTTP) per module.

Tests assert on what the *sidecar* recorded (``GET /programs/{id}`` and its timeline), never
on what the integration believes it sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from thunder_middleware.integrations.client import ThunderClient
from thunder_middleware.launch import RunningServer, start_sidecar, start_twin

MODEL = "qwen3-8b"


@dataclass
class Stack:
    twin: RunningServer
    sidecar: RunningServer
    client: ThunderClient

    @property
    def url(self) -> str:
        return self.sidecar.url

    @property
    def openai_base(self) -> str:
        return self.sidecar.url + "/v1"

    def program(self, program_id: str) -> dict[str, Any]:
        """The sidecar's record of a program (fails the test if it never saw it)."""
        found = self.client.program(program_id)
        assert found is not None, f"the sidecar never saw program {program_id!r}"
        return found

    def steps(self, program_id: str) -> int:
        return int(self.program(program_id)["summary"]["steps"])

    def program_ids(self) -> set[str]:
        return {p["program_id"] for p in self.client.programs()}


def start_stack() -> Stack:
    twin = start_twin(time_scale=200.0)
    try:
        sidecar = start_sidecar([twin.url], extra_args=["--env-provider", "local"])
    except Exception:
        twin.stop()
        raise
    return Stack(twin, sidecar, ThunderClient(sidecar.url))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = start_stack()
    try:
        yield running
    finally:
        running.client.close()
        running.sidecar.stop()
        running.twin.stop()


@pytest.fixture
def program_id() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"
