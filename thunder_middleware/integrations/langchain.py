"""LangChain v1 ``create_agent`` integration: ``middleware=[ThunderMiddleware()]``.

Why each hook:

- ``before_agent`` fixes the run's program id once and keeps it in (private) agent state, so
  every later hook and the tool node agree on it; with a declared environment it registers
  the program at once, overlapping environment creation with the first LLM call.
- ``wrap_model_call`` puts the id in ``extra_body`` and the ``X-Program-Id`` header through
  ``request.override(model_settings=...)``. ChatOpenAI *replaces* its own ``extra_body`` when
  a call passes one, so the model's ``extra_body`` is merged in here.
- ``after_model`` sends tool intent from the new message's ``tool_calls`` before the tools
  node runs, so the sidecar readies the environment while the graph routes.
- ``wrap_tool_call`` can run a tool in the program's environment (the sidecar's exec route).
- ``after_agent`` releases a program that lives for one invoke; a failed model or tool call
  releases too (the exception still propagates). Interrupts are not failures: the program
  stays, the idle timeout is the net.

A thread is a conversation: with a checkpointer, the thread's program outlives each invoke,
so the next turn finds its cache and its timeline, until ``middleware.release(thread_id)``
(or the sidecar's idle timeout). Without a checkpointer nothing of the thread survives the
invoke, and neither does its program; a program named by ``program_id`` (argument or run
context) is released at the end of the invoke as well. ``release_on_end=True`` or ``False``
overrides this.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, NotRequired

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    PrivateStateAttr,
)
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.errors import GraphBubbleUp
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command

from thunder_middleware.integrations.client import (
    AsyncThunderClient,
    ExecResult,
    ThunderClient,
    ToolIntent,
    control_url,
    format_exec_result,
)
from thunder_middleware.integrations.control_api import not_delivered
from thunder_middleware.integrations.tagging import (
    tool_intents,
    with_program_body,
    with_program_headers,
)

log = logging.getLogger(__name__)

PROGRAM_STATE_KEY = "thunder_program_id"

__all__ = ["PROGRAM_STATE_KEY", "ThunderMiddleware", "ThunderState", "program_id_of_runtime"]


class ThunderState(AgentState[Any]):
    """Agent state plus the run's program id (private: not in the agent's input/output)."""

    thunder_program_id: NotRequired[Annotated[str, PrivateStateAttr]]


ToolResult = ToolMessage | Command[Any]


def _from_context(context: Any, key: str) -> str | None:
    value = context.get(key) if isinstance(context, Mapping) else getattr(context, key, None)
    return value if isinstance(value, str) and value else None


def _thread_is_persisted() -> bool:
    """Whether the running graph has a checkpointer, so its thread outlives the invoke.

    Read from the run's config under LangGraph's ``CONFIG_KEY_CHECKPOINTER`` (a private
    constant, ``"__pregel_checkpointer"`` in langgraph 1.2); ``execution_info.thread_id`` is
    set from the config with or without one, so it cannot tell."""
    from langgraph.config import get_config

    try:
        configurable = get_config().get("configurable") or {}
    except RuntimeError:  # not inside a graph run
        return False
    return configurable.get("__pregel_checkpointer") is not None


def program_id_of_runtime(runtime: Any, context_key: str = "program_id") -> str | None:
    """Run context first (explicit beats implicit), then the thread id, from either a
    graph ``Runtime`` (``execution_info``) or a tool's ``ToolRuntime`` (``config``)."""
    if runtime is None:
        return None
    found = _from_context(getattr(runtime, "context", None), context_key)
    if found:
        return found
    info = getattr(runtime, "execution_info", None)
    thread_id = getattr(info, "thread_id", None)
    if thread_id:
        return str(thread_id)
    config = getattr(runtime, "config", None)
    configurable = config.get("configurable", {}) if isinstance(config, Mapping) else {}
    thread_id = configurable.get("thread_id")
    return str(thread_id) if thread_id else None


class ThunderMiddleware(AgentMiddleware[ThunderState, Any]):
    """Program identity, tool intent, environment exec and release for ``create_agent``.

    ``exec_tools`` maps a tool name to the argument holding its shell command; calls of those
    tools run in the program's environment instead of locally.
    """

    state_schema = ThunderState

    def __init__(self, sidecar_url: str | None = None, *, program_id: str | None = None,
                 client: ThunderClient | None = None,
                 async_client: AsyncThunderClient | None = None,
                 context_key: str = "program_id",
                 exec_tools: Mapping[str, str] | None = None,
                 environment: Mapping[str, Any] | None = None, preset: str | None = None,
                 exec_timeout_s: float = 60.0, release_on_end: bool | None = None,
                 send_tool_intent: bool = True) -> None:
        super().__init__()
        url = sidecar_url or (client.base_url if client else None)
        # Without a URL (argument, client, THUNDER_SIDECAR_URL) the sidecar is found where
        # the model points: its base URL *is* the sidecar's /v1 (see follow_model).
        self._follow_model = url is None and not os.environ.get("THUNDER_SIDECAR_URL")
        self.client = client or ThunderClient(url, attempts=2)
        self.async_client = async_client or AsyncThunderClient(url or self.client.base_url,
                                                               attempts=2)
        self.program_id = program_id
        self.context_key = context_key
        self.exec_tools = dict(exec_tools or {})
        self.environment = dict(environment) if environment is not None else None
        self.preset = preset
        self.exec_timeout_s = exec_timeout_s
        self.release_on_end = release_on_end
        self.send_tool_intent = send_tool_intent
        self._unregistered: set[str] = set()  # waiting for the model to reveal the sidecar

    # -- identity -------------------------------------------------------------------------

    def resolve_program_id(self, state: Mapping[str, Any] | None, runtime: Any) -> str:
        stored = (state or {}).get(PROGRAM_STATE_KEY)
        if isinstance(stored, str) and stored:
            return stored
        return (self.program_id or program_id_of_runtime(runtime, self.context_key)
                or f"agent-{uuid.uuid4().hex}")

    def _wants_registration(self) -> bool:
        return self.environment is not None or self.preset is not None

    def _register_now(self, program_id: str) -> bool:
        """Whether to register at agent start; else at the first model call, once the model
        has told us where the sidecar is."""
        if not self._wants_registration():
            return False
        if self._follow_model:
            self._unregistered.add(program_id)
            return False
        return True

    def before_agent(self, state: ThunderState, runtime: Any) -> dict[str, Any] | None:
        program_id = self.resolve_program_id(None, runtime)
        if self._register_now(program_id):
            self.client.register(program_id, environment=self.environment, preset=self.preset)
        return {PROGRAM_STATE_KEY: program_id}

    async def abefore_agent(self, state: ThunderState, runtime: Any) -> dict[str, Any] | None:
        program_id = self.resolve_program_id(None, runtime)
        if self._register_now(program_id):
            await self.async_client.register(program_id, environment=self.environment,
                                             preset=self.preset)
        return {PROGRAM_STATE_KEY: program_id}

    # -- model calls ----------------------------------------------------------------------

    def follow_model(self, model: Any) -> None:
        """Point the control clients at the sidecar the model talks to (once)."""
        base = getattr(model, "openai_api_base", None)
        if not (self._follow_model and isinstance(base, str) and base):
            return
        self._follow_model = False
        self.client = ThunderClient(control_url(base), attempts=2)
        self.async_client = AsyncThunderClient(self.client.base_url, attempts=2)

    def tag(self, request: ModelRequest[Any]) -> ModelRequest[Any]:
        """The request with the program id merged into body and headers."""
        self.follow_model(request.model)
        program_id = self.resolve_program_id(request.state, request.runtime)
        settings = dict(request.model_settings)
        model_body = getattr(request.model, "extra_body", None) or {}
        settings["extra_body"] = with_program_body(
            {**model_body, **(settings.get("extra_body") or {})}, program_id)
        settings["extra_headers"] = with_program_headers(settings.get("extra_headers"),
                                                         program_id)
        return request.override(model_settings=settings)

    def _deferred_registration(self, request: ModelRequest[Any]) -> str | None:
        program_id = self.resolve_program_id(request.state, request.runtime)
        if program_id in self._unregistered:
            self._unregistered.discard(program_id)
            return program_id
        return None

    def wrap_model_call(self, request: ModelRequest[Any],
                        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]]
                        ) -> ModelResponse[Any] | AIMessage:
        tagged = self.tag(request)
        pending = self._deferred_registration(tagged)
        if pending:
            self.client.register(pending, environment=self.environment, preset=self.preset)
        try:
            return handler(tagged)
        except GraphBubbleUp:
            raise
        except Exception:
            self._release_after_failure(tagged.state, tagged.runtime)
            raise

    async def awrap_model_call(
        self, request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage:
        tagged = self.tag(request)
        pending = self._deferred_registration(tagged)
        if pending:
            await self.async_client.register(pending, environment=self.environment,
                                             preset=self.preset)
        try:
            return await handler(tagged)
        except GraphBubbleUp:
            raise
        except Exception:
            await self._arelease_after_failure(tagged.state, tagged.runtime)
            raise

    def _pending_intents(self, state: Mapping[str, Any]) -> list[ToolIntent]:
        messages = state.get("messages") or []
        last = messages[-1] if messages else None
        if not (self.send_tool_intent and isinstance(last, AIMessage)):
            return []
        return tool_intents(last.tool_calls)

    def after_model(self, state: ThunderState, runtime: Any) -> dict[str, Any] | None:
        intents = self._pending_intents(state)
        if intents:
            program_id = self.resolve_program_id(state, runtime)
            try:
                self.client.tool_intent(program_id, intents)
            except Exception as exc:  # readiness is an optimisation, never a failure
                not_delivered(f"tool intent for {program_id}", exc)
        return None

    async def aafter_model(self, state: ThunderState, runtime: Any) -> dict[str, Any] | None:
        intents = self._pending_intents(state)
        if intents:
            program_id = self.resolve_program_id(state, runtime)
            try:
                await self.async_client.tool_intent(program_id, intents)
            except Exception as exc:
                not_delivered(f"tool intent for {program_id}", exc)
        return None

    # -- tool calls -----------------------------------------------------------------------

    def _exec_command(self, request: ToolCallRequest) -> str | list[str] | None:
        argument = self.exec_tools.get(request.tool_call["name"])
        if argument is None:
            return None
        command = request.tool_call["args"].get(argument)
        return command if isinstance(command, str | list) else str(command)

    def _tool_message(self, request: ToolCallRequest, result: ExecResult) -> ToolMessage:
        return ToolMessage(content=format_exec_result(result), name=request.tool_call["name"],
                           tool_call_id=request.tool_call["id"] or "",
                           status="success" if result.exit_code == 0 else "error")

    def wrap_tool_call(self, request: ToolCallRequest,
                       handler: Callable[[ToolCallRequest], ToolResult]) -> ToolResult:
        command = self._exec_command(request)
        try:
            if command is None:
                return handler(request)
            program_id = self.resolve_program_id(request.state, request.runtime)
            result = self.client.exec(program_id, command, timeout_s=self.exec_timeout_s)
            return self._tool_message(request, result)
        except GraphBubbleUp:
            raise
        except Exception:
            self._release_after_failure(request.state, request.runtime)
            raise

    async def awrap_tool_call(self, request: ToolCallRequest,
                              handler: Callable[[ToolCallRequest], Awaitable[ToolResult]]
                              ) -> ToolResult:
        command = self._exec_command(request)
        try:
            if command is None:
                return await handler(request)
            program_id = self.resolve_program_id(request.state, request.runtime)
            result = await self.async_client.exec(program_id, command,
                                                  timeout_s=self.exec_timeout_s)
            return self._tool_message(request, result)
        except GraphBubbleUp:
            raise
        except Exception:
            await self._arelease_after_failure(request.state, request.runtime)
            raise

    # -- release --------------------------------------------------------------------------

    def _release_after_failure(self, state: Any, runtime: Any) -> None:
        program_id = self.resolve_program_id(state if isinstance(state, Mapping) else None,
                                             runtime)
        try:
            self.client.release(program_id)
        except Exception as exc:  # the original error matters more; idle timeout reaps
            not_delivered(f"release of {program_id} after failure", exc)

    async def _arelease_after_failure(self, state: Any, runtime: Any) -> None:
        program_id = self.resolve_program_id(state if isinstance(state, Mapping) else None,
                                             runtime)
        try:
            await self.async_client.release(program_id)
        except Exception as exc:
            not_delivered(f"release of {program_id} after failure", exc)

    def _release_at_end(self, runtime: Any) -> bool:
        """Explicit ``release_on_end``, else: keep a checkpointed thread's program (a
        conversation), release every other (it lives for one invoke)."""
        if self.release_on_end is not None:
            return self.release_on_end
        if self.program_id or _from_context(getattr(runtime, "context", None),
                                            self.context_key):
            return True
        return not _thread_is_persisted()

    def after_agent(self, state: ThunderState, runtime: Any) -> dict[str, Any] | None:
        if self._release_at_end(runtime):
            self.client.release(self.resolve_program_id(state, runtime))
        return None

    async def aafter_agent(self, state: ThunderState, runtime: Any) -> dict[str, Any] | None:
        if self._release_at_end(runtime):
            await self.async_client.release(self.resolve_program_id(state, runtime))
        return None

    def release(self, thread_id: str) -> dict[str, Any] | None:
        """End a conversation: release the program of ``thread_id`` (or any program id) now.
        None if the sidecar has no live program of that id."""
        return self.client.release(thread_id)

    async def arelease(self, thread_id: str) -> dict[str, Any] | None:
        return await self.async_client.release(thread_id)
