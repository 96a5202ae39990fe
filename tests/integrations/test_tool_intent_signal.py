"""Tool intent without any environment: a scheduling signal the sidecar records and shows.

The sidecar here runs with ``--env-provider none``. Each integration, built exactly as its
README line says (no environment, no preset), must get its intents accepted: each step
after a tool call names its tools with a tool time in ``GET /programs/{id}``, and
``/metrics`` counts the intents and the tool time per tool name.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import litellm
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from tests.integrations.conftest import MODEL, Stack
from thunder_middleware.integrations.client import ThunderClient
from thunder_middleware.integrations.langchain import ThunderMiddleware
from thunder_middleware.integrations.langgraph import ThunderCallbackHandler, tag_program
from thunder_middleware.integrations.litellm import ThunderLiteLLMCallback
from thunder_middleware.launch import start_sidecar, start_twin

TASK = "Find the helper in utils.py and read the file."
LITELLM_TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"]}}}]


@tool
def grep(pattern: str) -> str:
    """Search the repository."""
    return "utils.py:3: def helper():"


@tool
def read_file(path: str) -> str:
    """Read a file."""
    return "def helper():\n    return 42\n"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    twin = start_twin(time_scale=200.0)
    try:
        sidecar = start_sidecar([twin.url], extra_args=["--env-provider", "none"])
    except Exception:
        twin.stop()
        raise
    client = ThunderClient(sidecar.url)
    try:
        yield Stack(twin, sidecar, client)
    finally:
        client.close()
        sidecar.stop()
        twin.stop()


@pytest.fixture
def program_id() -> str:
    return f"ti-{uuid.uuid4().hex[:10]}"


def not_delivered(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "not delivered" in r.getMessage() or "not a thunder" in r.getMessage()]


def assert_intents_recorded(stack: Stack, program_id: str, tools: set[str]) -> None:
    seen = stack.program(program_id)
    after_tools = [step for step in seen["timeline"] if step["tools"]]
    assert after_tools, f"no step of {program_id} names a tool: {seen['timeline']}"
    assert {name for step in after_tools for name in step["tools"]} <= tools
    assert all(step["tool_s"] > 0 for step in after_tools)  # intent to the next call
    assert seen["summary"]["tool_intents"] >= len(after_tools)
    assert seen["summary"]["tool_s"] > 0


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_langchain_agent_with_two_tools(stack: Stack, program_id: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    llm = ChatOpenAI(model=MODEL, base_url=stack.openai_base, api_key="EMPTY",  # type: ignore[arg-type]
                     max_tokens=1024)
    agent = create_agent(llm, [grep, read_file], middleware=[ThunderMiddleware()])
    state = agent.invoke({"messages": [{"role": "user", "content": TASK}]},
                         context={"program_id": program_id})
    assert any(isinstance(m, AIMessage) and m.tool_calls for m in state["messages"])
    assert not not_delivered(caplog)
    assert_intents_recorded(stack, program_id, {"grep", "read_file"})


def test_langgraph_state_graph_with_tool_node(stack: Stack, program_id: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    llm = ChatOpenAI(model=MODEL, base_url=stack.openai_base, api_key="EMPTY",  # type: ignore[arg-type]
                     max_tokens=1024)
    model = tag_program(llm.bind_tools([grep, read_file]))
    graph = StateGraph(MessagesState)
    graph.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_node("tools", ToolNode([grep, read_file]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    graph.compile().invoke({"messages": [("user", TASK)]},
                           {"metadata": {"program_id": program_id},
                            "callbacks": [ThunderCallbackHandler()]})
    assert not not_delivered(caplog)
    assert_intents_recorded(stack, program_id, {"grep", "read_file"})
    assert stack.program(program_id)["terminated_reason"] == "released"


async def test_litellm_acompletion_and_router(stack: Stack, program_id: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    previous = list(litellm.callbacks)
    litellm.callbacks = [ThunderLiteLLMCallback()]
    deployment = {"model": f"openai/{MODEL}", "api_base": stack.openai_base, "api_key": "EMPTY"}
    router = litellm.Router(model_list=[{"model_name": "agent", "litellm_params": deployment},
                                        {"model_name": "agent", "litellm_params": deployment}])
    routed = program_id + "-router"
    try:
        for pid, call in ((program_id, litellm.acompletion), (routed, router.acompletion)):
            messages: list[dict[str, Any]] = [{"role": "user", "content": TASK}]
            for _ in range(8):
                kwargs = {"messages": messages, "tools": LITELLM_TOOLS, "max_tokens": 1024,
                          "metadata": {"session_id": pid}}
                if call is router.acompletion:
                    response = await call(model="agent", **kwargs)
                else:
                    response = await call(**deployment, **kwargs)
                message = response.choices[0].message
                if not message.tool_calls:
                    break
                messages = [*messages, {"role": "assistant", "content": message.content,
                                        "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.function.name, "arguments": c.function.arguments}}
                    for c in message.tool_calls]}]
                messages += [{"role": "tool", "tool_call_id": c.id, "content": "..."}
                             for c in message.tool_calls]
    finally:
        litellm.callbacks = previous
    assert not not_delivered(caplog)
    assert_intents_recorded(stack, program_id, {"read_file"})
    assert_intents_recorded(stack, routed, {"read_file"})


def test_metrics_count_intents_and_tool_time_by_tool(stack: Stack, program_id: str) -> None:
    before = httpx.get(stack.url + "/metrics").text
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        body = {"model": MODEL, "max_tokens": 16, "program_id": program_id,
                "messages": [{"role": "user", "content": "hi"}]}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        accepted = http.post(f"/programs/{program_id}/tool-intent",
                             json={"tools": [{"name": "pytest", "arguments": {"k": "x"}}]})
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["environment"] is None and accepted.json()["acting"] is True
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        ghost = http.post("/programs/never-seen/tool-intent", json={"tools": [{"name": "x"}]})
        assert ghost.status_code == 404 and ghost.json()["error"]["param"] == "program_id"
        bad = http.post(f"/programs/{program_id}/tool-intent", json={"tools": [{"nm": "x"}]})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        http.post("/programs/release", json={"program_id": program_id})
        released = http.post(f"/programs/{program_id}/tool-intent", json={"tools": []})
        assert released.status_code == 409, released.text
    after = httpx.get(stack.url + "/metrics").text
    name = "thunder_sidecar_tool_intents_total"
    assert metric(after, name, outcome="recorded") == metric(before, name, outcome="recorded") + 1
    assert metric(after, name, outcome="rejected") >= metric(before, name, outcome="rejected") + 2
    count = "thunder_sidecar_tool_seconds_count"
    assert metric(after, count, tool="pytest") == metric(before, count, tool="pytest") + 1
    step = stack.program(program_id)["timeline"][1]
    assert step["tools"] == ["pytest"] and step["tool_s"] > 0
