"""Plain ``StateGraph``: tag_program + ThunderCallbackHandler against the real stack."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from tests.integrations.conftest import MODEL, Stack
from tests.integrations.env_probe import environment_probe, live_environments
from thunder_middleware.integrations.langgraph import (
    ThunderCallbackHandler,
    program_config,
    tag_program,
)

TASK = "Rename the helper in utils.py and update its callers."


@tool
def grep(pattern: str) -> str:
    """Search the repository."""
    return "utils.py:3: def helper():"


@tool
def edit(path: str, content: str) -> str:
    """Replace a file's content."""
    return "ok"


class NodeCrashed(RuntimeError):
    pass


def build_graph(model: Runnable[Any, Any], *, crash_after_first_call: bool = False) -> Any:
    async def agent(state: MessagesState) -> dict[str, Any]:
        reply = await model.ainvoke(state["messages"])
        if crash_after_first_call:
            raise NodeCrashed("agent node failed after its model call")
        return {"messages": [reply]}

    def agent_sync(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", RunnableLambda(agent_sync, afunc=agent))
    graph.add_node("tools", ToolNode([grep, edit]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=InMemorySaver())


def model_for(stack: Stack, **options: Any) -> Runnable[Any, Any]:
    llm = ChatOpenAI(model=MODEL, base_url=stack.openai_base, api_key="EMPTY",  # type: ignore[arg-type]
                     max_tokens=1024, **options)
    return tag_program(llm.bind_tools([grep, edit]))


def model_calls(state: dict[str, Any]) -> int:
    return sum(isinstance(m, AIMessage) for m in state["messages"])


def test_sync_graph_tags_every_call_and_releases(stack: Stack, program_id: str) -> None:
    handler = ThunderCallbackHandler()  # no URL: it follows the model to its sidecar
    graph = build_graph(model_for(stack))
    state = graph.invoke({"messages": [("user", TASK)]},
                         {"configurable": {"thread_id": program_id}, "callbacks": [handler]})
    assert model_calls(state) >= 3
    assert stack.program(program_id)["terminated_reason"] is None  # a thread is kept
    handler.release(program_id)  # the end of the conversation
    seen = stack.program(program_id)
    assert seen["summary"]["steps"] == model_calls(state)
    assert seen["terminated_reason"] == "released"
    assert handler.released == [program_id]


async def test_async_streaming_graph_with_explicit_program_id(stack: Stack,
                                                              program_id: str) -> None:
    handler = ThunderCallbackHandler(stack.url)
    graph = build_graph(model_for(stack, streaming=True))
    config = program_config(program_id, handler, thread_id=f"{program_id}-thread")
    tokens = 0
    async for _ in graph.astream({"messages": [("user", TASK)]}, config, stream_mode="messages"):
        tokens += 1
    state = (await graph.aget_state(config)).values
    seen = stack.program(program_id)  # metadata.program_id beats the thread id
    assert tokens > model_calls(state)
    assert seen["summary"]["steps"] == model_calls(state) >= 3
    assert all(step["stream"] for step in seen["timeline"])
    assert seen["terminated_reason"] == "released"


async def test_two_threads_of_one_graph_are_two_programs(stack: Stack, program_id: str) -> None:
    handler = ThunderCallbackHandler(stack.url, release_on_end=True)
    graph = build_graph(model_for(stack))
    threads = [f"{program_id}-x", f"{program_id}-y"]
    states = await asyncio.gather(*(
        graph.ainvoke({"messages": [("user", f"{TASK} [{t}]")]},
                      {"configurable": {"thread_id": t}, "callbacks": [handler]})
        for t in threads))
    for thread, state in zip(threads, states, strict=True):
        assert stack.steps(thread) == model_calls(state)
    assert sorted(handler.released) == sorted(threads)


async def test_node_error_releases_the_program(stack: Stack, program_id: str) -> None:
    handler = ThunderCallbackHandler(stack.url)
    graph = build_graph(model_for(stack), crash_after_first_call=True)
    with pytest.raises(NodeCrashed):
        await graph.ainvoke({"messages": [("user", TASK)]},
                            {"configurable": {"thread_id": program_id}, "callbacks": [handler]})
    seen = stack.program(program_id)
    assert seen["summary"]["steps"] == 1
    assert seen["terminated_reason"] == "released"


def test_bound_extra_body_survives(stack: Stack, program_id: str) -> None:
    """``extra_body`` set on the model *and* on a binding both reach the engine."""
    llm = ChatOpenAI(model=MODEL, base_url=stack.openai_base, api_key="EMPTY",  # type: ignore[arg-type]
                     max_tokens=450, extra_body={"ignore_eos": True})
    tagged = tag_program(llm.bind(extra_body={"min_tokens": 10}))
    tagged.invoke([("user", TASK)], {"configurable": {"thread_id": program_id}})
    untagged_control = ChatOpenAI(model=MODEL, base_url=stack.openai_base,  # type: ignore[arg-type]
                                  api_key="EMPTY", max_tokens=450)
    control = untagged_control.invoke([("user", TASK)])
    step = stack.program(program_id)["timeline"][0]
    assert step["completion_tokens"] == 450  # ignore_eos arrived: exactly max_tokens
    assert control.usage_metadata is not None
    assert control.usage_metadata["output_tokens"] < 450  # without it the reply ends sooner


def test_handler_tool_intent_precedes_the_tools_node(stack: Stack, program_id: str) -> None:
    inspect_sandbox, observed = environment_probe(stack, program_id)
    llm = ChatOpenAI(model=MODEL, base_url=stack.openai_base, api_key="EMPTY",  # type: ignore[arg-type]
                     max_tokens=1024)
    model = tag_program(llm.bind_tools([inspect_sandbox]))
    graph = StateGraph(MessagesState)
    graph.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_node("tools", ToolNode([inspect_sandbox]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    graph.compile().invoke({"messages": [("user", TASK)]},
                           {"configurable": {"thread_id": program_id},
                            "callbacks": [ThunderCallbackHandler(stack.url)]})
    started, environments = observed[0]
    live = live_environments(environments)
    assert live and live[0]["created_at"] < started


def test_handler_preset_gives_the_program_an_environment(stack: Stack, program_id: str) -> None:
    handler = ThunderCallbackHandler(preset="local-shell")  # follows the model to its sidecar
    graph = build_graph(model_for(stack))
    graph.invoke({"messages": [("user", TASK)]},
                 {"configurable": {"thread_id": program_id}, "callbacks": [handler]})
    environments = stack.program(program_id)["environments"]
    assert environments and environments[0]["provider"] == "local"
    handler.release(program_id)
    assert stack.program(program_id)["terminated_reason"] == "released"
