"""Plain LangGraph ``StateGraph`` integration: a model tagger and a callback handler.

A callback handler cannot change the request it observes, and a contextvar set inside a
handler does not reach the model call (handlers run in executor threads or separate tasks
unless ``run_inline``). So identity travels in the *call path*: :func:`tag_program` wraps
the model in a runnable that reads the program id from the ``RunnableConfig`` it is invoked
with (``metadata.program_id`` > ``configurable.program_id`` > ``configurable.thread_id``) and
binds ``extra_body`` + header for that one call.

:class:`ThunderCallbackHandler` does what needs no request changes: it maps run ids to
programs (``on_llm_end`` carries no metadata, so it is keyed by run id, inherited down the
parent chain), sends tool intent when a model call ends with tool calls (the graph awaits
handlers before the next node, so the intent precedes the tools node), and releases.

A thread is a conversation: a program named by its ``thread_id`` outlives the invoke, so
the next turn finds its cache and its timeline; ``handler.release(thread_id)`` ends it (the
sidecar's idle timeout is the backstop). A callback cannot see whether the graph has a
checkpointer, so the thread id alone decides. A program with no thread (an explicit
``metadata.program_id``, or none: a fresh id per run) lives for one invoke and is released
when the root run ends. A failed run is released either way. ``release_on_end=True`` or
``False`` overrides this.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, RunnableLambda

from thunder_middleware.integrations.client import ThunderClient, control_url
from thunder_middleware.integrations.control_api import not_delivered
from thunder_middleware.integrations.tagging import (
    program_id_from_metadata,
    tool_intents,
    with_program_body,
    with_program_headers,
)

log = logging.getLogger(__name__)

__all__ = ["ThunderCallbackHandler", "program_config", "program_id_of_config", "tag_program"]


def program_id_of_config(config: Mapping[str, Any] | None) -> str | None:
    """``metadata.program_id`` > ``configurable.program_id`` > ``configurable.thread_id``."""
    config = config or {}
    found = program_id_from_metadata(config.get("metadata"))
    if found:
        return found
    configurable = config.get("configurable") or {}
    found = program_id_from_metadata(configurable)
    if found:
        return found
    thread_id = configurable.get("thread_id")
    return str(thread_id) if thread_id else None


def _existing_extra_body(runnable: Any) -> dict[str, Any]:
    """``extra_body`` already set on the model or any binding around it (outer wins)."""
    if isinstance(runnable, RunnableBinding):
        inner = _existing_extra_body(runnable.bound)
        return {**inner, **(runnable.kwargs.get("extra_body") or {})}
    return dict(getattr(runnable, "extra_body", None) or {})


def tag_program(model: Runnable[Any, Any], program_id: str | None = None) -> Runnable[Any, Any]:
    """``model`` (or ``model.bind_tools(...)``) tagged per call with its program.

    ``program_id`` fixes the id; otherwise it comes from each call's config. Calls without
    any id go through untagged (anonymous single-step programs).
    """

    def bound(config: RunnableConfig) -> Runnable[Any, Any]:
        found = program_id or program_id_of_config(config)
        if not found:
            return model
        return model.bind(
            extra_body=with_program_body(_existing_extra_body(model), found),
            extra_headers=with_program_headers(None, found),
        )

    def route(value: Any, config: RunnableConfig) -> Runnable[Any, Any]:
        return bound(config)

    async def aroute(value: Any, config: RunnableConfig) -> Runnable[Any, Any]:
        return bound(config)

    # A RunnableLambda that returns a runnable invokes (or streams) it with the same input
    # and config, so streaming and callbacks behave exactly as for the bare model.
    return RunnableLambda(route, afunc=aroute, name="thunder_program")


def program_config(program_id: str, handler: ThunderCallbackHandler | None = None, *,
                   thread_id: str | None = None, **config: Any) -> RunnableConfig:
    """A ``RunnableConfig`` that names the program (and carries the handler, if given)."""
    result: dict[str, Any] = dict(config)
    result["metadata"] = {**(config.get("metadata") or {}), "program_id": program_id}
    if thread_id is not None:
        result["configurable"] = {**(config.get("configurable") or {}), "thread_id": thread_id}
    if handler is not None:
        result["callbacks"] = [*(config.get("callbacks") or []), handler]
    return RunnableConfig(**result)  # type: ignore[typeddict-item]


class ThunderCallbackHandler(BaseCallbackHandler):
    """Tool intent and release for a LangGraph run; pass it in ``config["callbacks"]``."""

    raise_error = False

    def __init__(self, sidecar_url: str | None = None, *, client: ThunderClient | None = None,
                 program_id: str | None = None, release_on_end: bool | None = None,
                 send_tool_intent: bool = True, environment: Mapping[str, Any] | None = None,
                 preset: str | None = None) -> None:
        # Without a URL (argument, client, THUNDER_SIDECAR_URL) the handler follows the first
        # chat model it sees: its serialized openai_api_base *is* the sidecar's /v1.
        self._follow_model = (client is None and sidecar_url is None
                              and not os.environ.get("THUNDER_SIDECAR_URL"))
        self.client = client or ThunderClient(sidecar_url, attempts=2)
        self.program_id = program_id
        self.release_on_end = release_on_end
        self.send_tool_intent = send_tool_intent
        self.environment = dict(environment) if environment is not None else None
        self.preset = preset
        self._programs: dict[UUID, str] = {}
        self._roots: set[UUID] = set()
        self._threads: set[str] = set()  # running programs named by a thread id
        self._declared: set[str] = set()  # running programs whose environment was declared
        self._lock = threading.Lock()
        self.released: list[str] = []  # what this handler released, in order (observability)

    def _remember(self, run_id: UUID, parent_run_id: UUID | None,
                  metadata: Mapping[str, Any] | None) -> str:
        metadata = metadata or {}
        with self._lock:
            named = self.program_id or program_id_from_metadata(metadata)
            thread = str(metadata["thread_id"]) if metadata.get("thread_id") else None
            program_id = (named or thread
                          or (self._programs.get(parent_run_id) if parent_run_id else None)
                          or f"graph-{uuid.uuid4().hex}")
            if not named and thread and parent_run_id is None:
                self._threads.add(program_id)
            self._programs[run_id] = program_id
            if parent_run_id is None:
                self._roots.add(run_id)
            return program_id

    def program_of(self, run_id: UUID) -> str | None:
        with self._lock:
            return self._programs.get(run_id)

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None,
                       metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._remember(run_id, parent_run_id, metadata)

    def _follow(self, serialized: dict[str, Any] | None) -> None:
        base = ((serialized or {}).get("kwargs") or {}).get("openai_api_base")
        if self._follow_model and isinstance(base, str) and base:
            self._follow_model = False
            self.client = ThunderClient(control_url(base), attempts=2)

    def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: Any, *,
                            run_id: UUID, parent_run_id: UUID | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._follow(serialized)
        self._declare_environment(self._remember(run_id, parent_run_id, metadata))

    def _declare_environment(self, program_id: str) -> None:
        """At a program's first model call (the sidecar is known by then): its environment."""
        if self.environment is None and self.preset is None:
            return
        with self._lock:
            if program_id in self._declared:
                return
            self._declared.add(program_id)
        try:
            self.client.register(program_id, environment=self.environment, preset=self.preset)
        except Exception as exc:  # the run still works; its tools run without readiness
            not_delivered(f"environment declaration of {program_id}", exc)

    def release(self, program_id: str) -> dict[str, Any] | None:
        """End a conversation (or any program): release ``program_id`` (its thread id) now.
        None if the sidecar has no live program of that id."""
        with self._lock:
            self._threads.discard(program_id)
            self._declared.discard(program_id)
        released = self.client.release(program_id)
        self.released.append(program_id)
        return released

    def on_llm_start(self, serialized: dict[str, Any] | None, prompts: Any, *, run_id: UUID,
                     parent_run_id: UUID | None = None,
                     metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._remember(run_id, parent_run_id, metadata)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            program_id = self._programs.pop(run_id, None)
        if not (program_id and self.send_tool_intent):
            return
        calls = [call for generations in response.generations for g in generations
                 if isinstance(g, ChatGeneration)
                 for call in getattr(g.message, "tool_calls", None) or ()]
        intents = tool_intents(calls)
        if intents:
            try:
                self.client.tool_intent(program_id, intents)
            except Exception as exc:  # readiness is an optimisation, never a failure
                not_delivered(f"tool intent for {program_id}", exc)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._programs.pop(run_id, None)

    def _finish(self, run_id: UUID, *, failed: bool) -> None:
        with self._lock:
            program_id = self._programs.pop(run_id, None)
            is_root = run_id in self._roots
            self._roots.discard(run_id)
            conversation = program_id in self._threads
            if is_root and program_id:
                # per run only, so nothing here grows with the number of conversations kept
                # (the next invoke of a thread marks it again; re-declaring is idempotent)
                self._threads.discard(program_id)
                self._declared.discard(program_id)
        if not (is_root and program_id):
            return
        release = self.release_on_end
        if release is None:
            release = failed or not conversation
        if release:
            try:
                self.release(program_id)
            except Exception as exc:  # the sidecar's idle timeout is the safety net
                not_delivered(f"release of {program_id}", exc)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._finish(run_id, failed=False)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        # an interrupt ends the run with GraphInterrupt: not a failure, the thread resumes
        self._finish(run_id, failed=not _is_interrupt(error))


def _is_interrupt(error: BaseException) -> bool:
    from langgraph.errors import GraphBubbleUp

    return isinstance(error, GraphBubbleUp)
