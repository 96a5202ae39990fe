"""A thread (LangGraph, LangChain) is one program across invokes: its turns share one
timeline, the second turn's first call hits the cache the first turn left, and the program
ends when the conversation ends (``release(thread_id)``), not after each invoke."""

from __future__ import annotations

from typing import Any

import httpx
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from tests.integrations.conftest import MODEL, Stack
from thunder_middleware.integrations.langchain import ThunderMiddleware
from thunder_middleware.integrations.langgraph import ThunderCallbackHandler, tag_program

FIRST = "Rename the helper in utils.py."
SECOND = "Now also update its callers."


@tool
def grep(pattern: str) -> str:
    """Search the repository."""
    return "utils.py:3: def helper():"


def chat_model(stack: Stack) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=stack.openai_base, api_key="EMPTY",  # type: ignore[arg-type]
                      max_tokens=512)


def model_calls(state: dict[str, Any]) -> int:
    return sum(isinstance(m, AIMessage) for m in state["messages"])


def assert_one_conversation(stack: Stack, thread: str, first_turn_calls: int,
                            all_calls: int) -> None:
    seen = stack.program(thread)
    assert seen["terminated_reason"] is None, "a thread must outlive its invokes"
    timeline = seen["timeline"]
    assert seen["summary"]["steps"] == len(timeline) == all_calls
    assert [step["index"] for step in timeline] == list(range(all_calls))
    second_turn_first_call = timeline[first_turn_calls]
    # the first turn's messages are the prefix of the second turn's first prompt
    assert second_turn_first_call["cached_tokens"] > 0, second_turn_first_call


def test_state_graph_thread_is_one_program_across_invokes(stack: Stack,
                                                          program_id: str) -> None:
    handler = ThunderCallbackHandler()
    model = tag_program(chat_model(stack).bind_tools([grep]))
    graph = StateGraph(MessagesState)
    graph.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_node("tools", ToolNode([grep]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    app = graph.compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": program_id}, "callbacks": [handler]}
    first = app.invoke({"messages": [("user", FIRST)]}, config)
    second = app.invoke({"messages": [("user", SECOND)]}, config)
    assert model_calls(second) > model_calls(first) >= 1
    assert_one_conversation(stack, program_id, model_calls(first), model_calls(second))
    assert handler.released == []
    handler.release(program_id)
    assert stack.program(program_id)["terminated_reason"] == "released"


async def test_create_agent_thread_is_one_program_across_invokes(stack: Stack,
                                                                 program_id: str) -> None:
    middleware = ThunderMiddleware()
    agent = create_agent(chat_model(stack), [grep], middleware=[middleware],
                         checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": program_id}}
    first = await agent.ainvoke({"messages": [{"role": "user", "content": FIRST}]}, config)
    second = await agent.ainvoke({"messages": [{"role": "user", "content": SECOND}]}, config)
    assert_one_conversation(stack, program_id, model_calls(first), model_calls(second))
    await middleware.arelease(program_id)
    assert stack.program(program_id)["terminated_reason"] == "released"


def test_without_checkpointer_each_invoke_is_released_and_history_kept(
        stack: Stack, program_id: str) -> None:
    """No checkpointer: nothing of the thread survives an invoke, so neither does its
    program; a later invoke on the same thread id adds to the same timeline."""
    agent = create_agent(chat_model(stack), [grep], middleware=[ThunderMiddleware()])
    first = agent.invoke({"messages": [{"role": "user", "content": FIRST}]},
                         {"configurable": {"thread_id": program_id}})
    assert stack.program(program_id)["terminated_reason"] == "released"
    second = agent.invoke({"messages": [{"role": "user", "content": SECOND}]},
                          {"configurable": {"thread_id": program_id}})
    seen = stack.program(program_id)
    assert seen["terminated_reason"] == "released"
    assert seen["summary"]["steps"] == model_calls(first) + model_calls(second)


def test_an_id_used_again_after_release_keeps_its_history(stack: Stack,
                                                          program_id: str) -> None:
    """Whatever the integration does, the sidecar never replaces a program's earlier steps."""
    body = {"model": MODEL, "max_tokens": 8, "program_id": program_id,
            "messages": [{"role": "user", "content": "turn"}]}
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        assert http.post("/programs/release", json={"program_id": program_id}).status_code == 200
        assert http.post("/v1/chat/completions", json=body).status_code == 200
    seen = stack.program(program_id)
    assert seen["summary"]["steps"] == 2
    assert [step["index"] for step in seen["timeline"]] == [0, 1]
