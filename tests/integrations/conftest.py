"""One real stack (engine twin + sidecar, separate processes over loopback HTTP) per module.

Tests assert on what the *sidecar* recorded (``GET /programs/{id}`` and its timeline), never
on what the integration believes it sent.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from thunder_middleware.integrations.client import ThunderClient
from thunder_middleware.launch import RunningServer, start_sidecar, start_twin

MODEL = "qwen3-8b"

# LiteLLM fetches its model cost map from GitHub at import; loopback-only tests use the copy
# bundled with the package (set before any test module imports litellm).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Integrations built without a URL find the sidecar from the model's base URL; a URL left in
# the developer's shell would point them at some other sidecar.
os.environ.pop("THUNDER_SIDECAR_URL", None)


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


def start_stack(sidecar_port: int | None = None) -> Stack:
    twin = start_twin(time_scale=200.0)
    try:
        sidecar = start_sidecar([twin.url], port=sidecar_port,
                                extra_args=["--env-provider", "local"])
    except Exception:
        twin.stop()
        raise
    return Stack(twin, sidecar, ThunderClient(sidecar.url))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Async tests here share one event loop: LangChain/OpenAI cache async HTTP clients
    process-wide, and a client bound to a closed per-test loop fails the next test."""
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        function = getattr(item, "function", None)
        if str(item.fspath).startswith(here) and inspect.iscoroutinefunction(function):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)


@contextlib.contextmanager
def running_stack(sidecar_port: int | None = None) -> Iterator[Stack]:
    running = start_stack(sidecar_port)
    try:
        yield running
    finally:
        running.client.close()
        running.sidecar.stop()
        running.twin.stop()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as running:
        yield running


@pytest.fixture
def program_id() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"
