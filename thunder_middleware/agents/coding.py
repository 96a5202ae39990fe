"""A small LangGraph coding agent, reused by the examples, the tests and the demo.

It is a ``create_agent`` graph with :class:`ThunderMiddleware`: every model call carries the
program id, every tool call is announced before it runs, tools execute in the program's
environment, and the program is released when the run ends (or fails).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage
from langchain_openai import ChatOpenAI

from thunder_middleware.agents.tools import coding_tools
from thunder_middleware.integrations.client import (
    AsyncThunderClient,
    ThunderClient,
    control_url,
)
from thunder_middleware.integrations.langchain import ThunderMiddleware

SYSTEM_PROMPT = (
    "You are a careful software engineer working in a sandbox. Use run_shell to inspect "
    "and test, read_file and write_file to edit. When the task is done, answer with a short "
    "summary of what you changed."
)

__all__ = ["CodingAgentResult", "build_coding_agent", "run_coding_agent", "served_model"]


def served_model(base_url: str, api_key: str = "EMPTY") -> str:
    """The first model an OpenAI-compatible server lists (the twin serves one)."""
    url = control_url(base_url) + "/v1/models"
    response = httpx.get(url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10.0)
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


def build_coding_agent(base_url: str, model: str, program_id: str,
                       client: ThunderClient | None = None, *,
                       async_client: AsyncThunderClient | None = None,
                       api_key: str = "EMPTY", environment: Mapping[str, Any] | None = None,
                       preset: str | None = None, system_prompt: str = SYSTEM_PROMPT,
                       max_tokens: int = 1024, extra_body: Mapping[str, Any] | None = None,
                       streaming: bool = False, checkpointer: Any = None,
                       tool_timeout_s: float = 60.0, release_on_end: bool = True) -> Any:
    """A compiled agent for one program. ``base_url`` is the sidecar (root or ``/v1``)."""
    sidecar = control_url(base_url)
    client = client or ThunderClient(sidecar, api_key=None if api_key == "EMPTY" else api_key)
    async_client = async_client or AsyncThunderClient(client.base_url)
    llm = ChatOpenAI(model=model, base_url=sidecar + "/v1", api_key=api_key,  # type: ignore[arg-type,call-arg]
                     max_tokens=max_tokens, streaming=streaming, max_retries=2,
                     extra_body=dict(extra_body) if extra_body else None)
    middleware = ThunderMiddleware(program_id=program_id, client=client,
                                   async_client=async_client, environment=environment,
                                   preset=preset, release_on_end=release_on_end)
    tools = coding_tools(program_id, client, async_client, timeout_s=tool_timeout_s)
    return create_agent(llm, tools, system_prompt=system_prompt, middleware=[middleware],
                        checkpointer=checkpointer, name="thunder_coding_agent")


@dataclass
class CodingAgentResult:
    """What one run did, as the agent saw it (the sidecar's own view: GET /programs/{id})."""

    program_id: str
    answer: str
    model_calls: int
    tool_calls: list[str]
    duration_s: float
    messages: list[BaseMessage] = field(repr=False, default_factory=list)


def summarize(program_id: str, messages: list[BaseMessage], started: float) -> CodingAgentResult:
    ai = [m for m in messages if isinstance(m, AIMessage)]
    return CodingAgentResult(
        program_id=program_id,
        answer=ai[-1].text if ai else "",
        model_calls=len(ai),
        tool_calls=[call["name"] for m in ai for call in m.tool_calls],
        duration_s=time.monotonic() - started,
        messages=messages,
    )


async def run_coding_agent(task: str, *, base_url: str, model: str | None = None,
                           program_id: str | None = None, api_key: str = "EMPTY",
                           environment: Mapping[str, Any] | None = None,
                           preset: str | None = None, recursion_limit: int = 80,
                           **agent_options: Any) -> CodingAgentResult:
    """Run ``task`` to completion in its own program, and release the program however the
    run ends (the middleware releases too; a second release is a harmless 404)."""
    program_id = program_id or f"coding-{uuid.uuid4().hex[:12]}"
    model = model or served_model(base_url, api_key)
    client = ThunderClient(control_url(base_url), api_key=None if api_key == "EMPTY" else api_key)
    async_client = AsyncThunderClient(client.base_url, api_key=client.settings.api_key)
    agent = build_coding_agent(base_url, model, program_id, client, async_client=async_client,
                               api_key=api_key, environment=environment, preset=preset,
                               **agent_options)
    started = time.monotonic()
    try:
        state = await agent.ainvoke({"messages": [{"role": "user", "content": task}]},
                                    {"recursion_limit": recursion_limit})
        return summarize(program_id, list(state["messages"]), started)
    finally:
        await async_client.release(program_id)
        await async_client.aclose()
        client.close()
