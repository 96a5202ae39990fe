"""A sandbox tool that records the program's environments at the moment it runs.

The LangChain middleware and the LangGraph handler both promise that a tool intent readies the
environment before the tool node starts; both tests check it the same way, through this probe.
"""

from __future__ import annotations

import time
from typing import Any

from langchain_core.tools import BaseTool, tool

from tests.integrations.conftest import Stack

#: Environment states that count as "there": being created or ready.
LIVE = ("preparing", "ready")

Observation = tuple[float, list[dict[str, Any]]]


def environment_probe(stack: Stack, program_id: str) -> tuple[BaseTool, list[Observation]]:
    """Register the program with a declared but not live environment and return a tool that
    appends ``(wall time, the program's environments)`` to the returned list each time it runs.
    """
    observed: list[Observation] = []

    @tool
    def inspect_sandbox(path: str) -> str:
        """Inspect a path in the sandbox."""
        observed.append((time.time(), stack.program(program_id)["environments"]))
        return "ok"

    stack.client.register(program_id, preset="local-shell")
    stack.client.remove_environment(program_id)  # keeps its spec; nothing live any more
    assert not live_environments(stack.program(program_id)["environments"])
    return inspect_sandbox, observed


def live_environments(environments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in environments if e["state"] in LIVE]
