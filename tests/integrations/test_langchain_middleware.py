"""ThunderMiddleware in a real ``create_agent`` graph, against the real sidecar and twin."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver

from tests.integrations.conftest import MODEL, Stack
from tests.integrations.env_probe import Observation, environment_probe, live_environments
from thunder_middleware.integrations.langchain import ThunderMiddleware

TASK = "The unit tests in tests/test_parser.py fail; find the bug and fix it."

tool_runs: list[float] = []


@tool
def run_shell(command: str) -> str:
    """Run a shell command in the repository."""
    tool_runs.append(time.time())
    return "exit_code: 0\nstdout:\nok"


@tool
def read_file(path: str) -> str:
    """Read a file of the repository."""
    tool_runs.append(time.time())
    return "def parse(x):\n    return x\n"


class ToolBroke(RuntimeError):
    pass


@tool
def broken_tool(path: str) -> str:
    """A tool whose backend is down."""
    raise ToolBroke("backend down")


def chat_model(stack: Stack, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=stack.openai_base, api_key="EMPTY",  # type: ignore[arg-type]
                      max_tokens=1024, **options)


def agent_for(stack: Stack, tools: list[Any] | None = None, *, checkpointer: Any = None,
              **model_options: Any) -> Any:
    return create_agent(chat_model(stack, **model_options), tools or [run_shell, read_file],
                        middleware=[ThunderMiddleware(stack.url, release_on_end=True)],
                        checkpointer=checkpointer)


def ai_messages(state: dict[str, Any]) -> list[AIMessage]:
    return [m for m in state["messages"] if isinstance(m, AIMessage)]


def assert_every_call_seen_and_released(stack: Stack, program_id: str,
                                        state: dict[str, Any]) -> None:
    calls = ai_messages(state)
    assert len(calls) >= 3, "the twin should make the agent loop through tool calls"
    assert any(m.tool_calls for m in calls)
    seen = stack.program(program_id)
    assert seen["summary"]["steps"] == len(calls)  # every model call carried the id
    assert seen["status"] == "terminated"
    assert seen["terminated_reason"] == "released"


def test_sync_agent_every_call_tagged_with_thread_id_and_released(stack: Stack,
                                                                  program_id: str) -> None:
    """The one-line form: no URL, the middleware follows the model to its sidecar. The
    checkpointed thread is a conversation: kept after the invoke, ended by release()."""
    middleware = ThunderMiddleware()
    agent = create_agent(chat_model(stack), [run_shell, read_file],
                         middleware=[middleware], checkpointer=InMemorySaver())
    state = agent.invoke({"messages": [{"role": "user", "content": TASK}]},
                         {"configurable": {"thread_id": program_id}})
    assert stack.program(program_id)["terminated_reason"] is None
    middleware.release(program_id)
    assert_every_call_seen_and_released(stack, program_id, state)


async def test_async_streaming_agent_every_call_tagged(stack: Stack, program_id: str) -> None:
    agent = agent_for(stack, checkpointer=InMemorySaver(), streaming=True)
    chunks = 0
    async for _ in agent.astream({"messages": [{"role": "user", "content": TASK}]},
                                 {"configurable": {"thread_id": program_id}},
                                 stream_mode="messages"):
        chunks += 1
    state = (await agent.aget_state({"configurable": {"thread_id": program_id}})).values
    assert chunks > len(ai_messages(state))  # really streamed token by token
    timeline = stack.program(program_id)["timeline"]
    assert all(step["stream"] for step in timeline)
    assert_every_call_seen_and_released(stack, program_id, state)


def test_program_id_from_run_context_without_checkpointer(stack: Stack, program_id: str) -> None:
    agent = agent_for(stack)
    state = agent.invoke({"messages": [{"role": "user", "content": TASK}]},
                         context={"program_id": program_id})
    assert_every_call_seen_and_released(stack, program_id, state)


async def test_two_threads_of_one_graph_are_two_programs(stack: Stack, program_id: str) -> None:
    agent = agent_for(stack, checkpointer=InMemorySaver())
    threads = [f"{program_id}-a", f"{program_id}-b"]
    states = await asyncio.gather(*(
        agent.ainvoke({"messages": [{"role": "user", "content": f"{TASK} ({thread})"}]},
                      {"configurable": {"thread_id": thread}})
        for thread in threads))
    for thread, state in zip(threads, states, strict=True):
        assert stack.steps(thread) == len(ai_messages(state))


def test_model_extra_body_survives_the_merge(stack: Stack, program_id: str) -> None:
    """ChatOpenAI replaces its extra_body when a call passes one; the middleware merges.

    ``min_tokens`` (a vLLM extra) makes every reply at least that long: the sidecar's usage
    shows it reached the engine on every step, next to the program id.
    """
    agent = agent_for(stack, checkpointer=InMemorySaver(), extra_body={"min_tokens": 300})
    state = agent.invoke({"messages": [{"role": "user", "content": TASK}]},
                         {"configurable": {"thread_id": program_id}})
    timeline = stack.program(program_id)["timeline"]
    assert len(timeline) == len(ai_messages(state)) >= 2
    assert all(step["completion_tokens"] >= 300 for step in timeline)


def test_control_without_min_tokens_is_shorter(stack: Stack, program_id: str) -> None:
    """The counterpart that makes the test above discriminating: same task, no extra."""
    agent = agent_for(stack, checkpointer=InMemorySaver())
    agent.invoke({"messages": [{"role": "user", "content": TASK}]},
                 {"configurable": {"thread_id": program_id}})
    timeline = stack.program(program_id)["timeline"]
    assert any(step["completion_tokens"] < 300 for step in timeline)


def test_failed_tool_releases_the_program_and_propagates(stack: Stack, program_id: str) -> None:
    agent = agent_for(stack, [broken_tool], checkpointer=InMemorySaver())
    with pytest.raises(ToolBroke):
        agent.invoke({"messages": [{"role": "user", "content": TASK}]},
                     {"configurable": {"thread_id": program_id}})
    seen = stack.program(program_id)
    assert seen["summary"]["steps"] == 1
    assert seen["status"] == "terminated"
    assert seen["terminated_reason"] == "released"


async def test_failed_tool_releases_on_the_async_path(stack: Stack, program_id: str) -> None:
    agent = agent_for(stack, [broken_tool], checkpointer=InMemorySaver())
    with pytest.raises(ToolBroke):
        await agent.ainvoke({"messages": [{"role": "user", "content": TASK}]},
                            {"configurable": {"thread_id": program_id}})
    assert stack.program(program_id)["terminated_reason"] == "released"


def run_with_env_probe(stack: Stack, program_id: str,
                       middleware: ThunderMiddleware) -> list[Observation]:
    """Run an agent whose only tool records the program's environments as it starts."""
    inspect_sandbox, observed = environment_probe(stack, program_id)
    agent = create_agent(chat_model(stack), [inspect_sandbox], middleware=[middleware],
                         checkpointer=InMemorySaver())
    agent.invoke({"messages": [{"role": "user", "content": TASK}]},
                 {"configurable": {"thread_id": program_id}})
    assert observed, "the twin should have called the tool"
    return observed


def test_tool_intent_readies_the_environment_before_the_tool_runs(stack: Stack,
                                                                  program_id: str) -> None:
    observed = run_with_env_probe(stack, program_id, ThunderMiddleware(stack.url))
    started, environments = observed[0]
    live = live_environments(environments)
    assert live, "after_model's tool intent should have re-created the environment"
    assert live[0]["created_at"] < started


def test_without_tool_intent_nothing_is_readied(stack: Stack, program_id: str) -> None:
    """The control for the test above: the same run with intents off finds no environment."""
    observed = run_with_env_probe(stack, program_id,
                                  ThunderMiddleware(stack.url, send_tool_intent=False))
    assert not live_environments(observed[0][1])


def test_exec_tools_run_in_the_program_environment(stack: Stack, program_id: str) -> None:
    @tool
    def shell(command: str) -> str:
        """Run a shell command in the sandbox."""
        raise AssertionError("routed tools must run in the environment, not in-process")

    # No URL: the environment is registered at the first model call, once the model has
    # shown where the sidecar is; exec would fail with "no environment" otherwise.
    middleware = ThunderMiddleware(exec_tools={"shell": "command"}, preset="local-shell",
                                   release_on_end=True)
    agent = create_agent(chat_model(stack), [shell], middleware=[middleware],
                         checkpointer=InMemorySaver())
    state = agent.invoke({"messages": [{"role": "user", "content": TASK}]},
                         {"configurable": {"thread_id": program_id}})
    results = [m for m in state["messages"] if m.type == "tool"]
    assert results and all(str(m.content).startswith("exit_code: ") for m in results)
    seen = stack.program(program_id)
    assert seen["summary"]["tool_s"] > 0  # the sidecar timed the commands it ran
    assert seen["terminated_reason"] == "released"
