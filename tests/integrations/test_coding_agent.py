"""The reusable coding agent: tools in the program's environment, end to end."""

from __future__ import annotations

import time

from tests.integrations.conftest import MODEL, Stack
from thunder_middleware.agents import build_coding_agent, run_coding_agent
from thunder_middleware.integrations.client import ThunderClient

TASK = "Create hello.py that prints hello, run it, and report the output."


async def test_run_coding_agent_to_completion(stack: Stack, program_id: str) -> None:
    result = await run_coding_agent(TASK, base_url=stack.openai_base, program_id=program_id,
                                    preset="local-shell")
    seen = stack.program(program_id)
    assert result.model_calls >= 3 and result.tool_calls
    assert seen["summary"]["steps"] == result.model_calls
    assert seen["summary"]["tool_s"] > 0  # every tool ran through the exec route
    assert seen["terminated_reason"] == "released"
    assert environment_states_settle(stack, program_id) == [("reclaimed", "release")]


def environment_states_settle(stack: Stack, program_id: str) -> list[tuple[str, str]]:
    """Reclaim finishes in the background after the release answer; wait up to 15 s."""
    deadline = time.monotonic() + 15
    while True:
        states = [(env["state"], env.get("reclaim_reason"))
                  for env in stack.program(program_id)["environments"]]
        if all(state == "reclaimed" for state, _ in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def test_build_coding_agent_sync_tools_touch_the_environment(stack: Stack,
                                                             program_id: str) -> None:
    with ThunderClient(stack.url) as client:
        agent = build_coding_agent(stack.url, MODEL, program_id, client, preset="local-shell",
                                   release_on_end=False)
        state = agent.invoke({"messages": [{"role": "user", "content": TASK}]},
                             {"recursion_limit": 80})
        outputs = [m.content for m in state["messages"] if m.type == "tool"]
        assert outputs and all(str(o).startswith("exit_code: ") for o in outputs)
        written = client.exec(program_id, ["sh", "-c", "echo probe > probe.txt"])
        assert written.exit_code == 0
        assert client.exec(program_id, ["cat", "probe.txt"]).stdout == "probe\n"
        client.release(program_id)
    assert stack.program(program_id)["terminated_reason"] == "released"
