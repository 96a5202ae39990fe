"""Real agent frameworks loop against the twin and terminate: LangGraph's ``create_agent``
(LangChain 1.x, through langchain-openai) and a hand-written LiteLLM tool loop."""

from __future__ import annotations

import json
import os
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from thunder_middleware.launch import RunningServer
from thunder_middleware.twin.content import TOOL_BUDGET_RANGE

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import

import litellm

CALLS: list[dict[str, Any]] = []


class Place(BaseModel):
    city: str
    country: str | None = None


@tool
def forecast(place: Place, days: int = 1) -> str:
    """Weather forecast for a place, ``days`` days ahead."""
    CALLS.append({"tool": "forecast", "city": place.city, "days": days})
    return f"Sunny in {place.city} for {days} days."


@tool
def search(query: str, limit: int = 3) -> str:
    """Search the web."""
    CALLS.append({"tool": "search", "query": query, "limit": limit})
    return "\n".join(f"result {i} for {query}" for i in range(3))


def test_langgraph_create_agent_loops_and_terminates(twin_server: RunningServer) -> None:
    CALLS.clear()
    model = ChatOpenAI(
        model="qwen3-8b", base_url=twin_server.url + "/v1", api_key="unused", max_tokens=400
    )
    agent = create_agent(model, [forecast, search], system_prompt="You plan trips. " * 40)
    result = agent.invoke({"messages": [{"role": "user", "content": "Plan a week in Lyon."}]})
    messages = result["messages"]
    tool_messages = [m for m in messages if isinstance(m, ToolMessage)]
    low, high = TOOL_BUDGET_RANGE
    assert low <= len(tool_messages) <= high
    assert len(CALLS) == len(tool_messages)  # the tools really ran with parsed arguments
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content
    # every turn after the first reuses the conversation's KV
    usages = [m.usage_metadata for m in messages if isinstance(m, AIMessage)]
    cache_reads = [u["input_token_details"].get("cache_read", 0) for u in usages if u]
    assert all(hit > 0 for hit in cache_reads[1:]), cache_reads


def test_litellm_tool_loop_terminates_with_cache_hits(twin_server: RunningServer) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "run_shell",
                "description": "Run a shell command.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "command": {"type": "string"},
                        "timeout_s": {"type": "number", "minimum": 0},
                    },
                    "required": ["command"],
                },
            },
        }
    ]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a coding agent. " * 50},
        {"role": "user", "content": "Fix the failing test."},
    ]
    cached: list[int] = []
    for _ in range(12):
        response: Any = litellm.completion(
            model="openai/qwen3-8b",
            api_base=twin_server.url + "/v1",
            api_key="unused",
            messages=messages,
            tools=tools,
            max_tokens=2000,
            program_id="litellm-agent",
        )
        choice = response.choices[0]
        details = response.usage.prompt_tokens_details
        cached.append(details.cached_tokens or 0 if details else 0)
        messages.append(choice.message.model_dump(exclude_none=True))
        if choice.finish_reason != "tool_calls":
            break
        for call in choice.message.tool_calls:
            arguments = json.loads(call.function.arguments)
            assert isinstance(arguments["command"], str)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "ok\n" * 30})
    else:
        raise AssertionError("the LiteLLM loop did not terminate")
    assert choice.finish_reason == "stop"
    assert len(cached) >= TOOL_BUDGET_RANGE[0] + 1
    assert all(hit > 0 for hit in cached[1:]), cached
