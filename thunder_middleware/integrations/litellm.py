"""LiteLLM SDK integration: one callback that carries program identity and tool intent.

Insert with ``litellm.callbacks = [ThunderLiteLLMCallback()]`` and pass
``metadata={"program_id": ...}`` per call. Why each hook:

- ``async_pre_call_deployment_hook`` runs after a deployment is picked, on every retry and
  fallback of the async path, and may return new kwargs: it is where ``extra_body`` and the
  header are merged in (``metadata`` itself is never forwarded to the provider).
- ``async_post_call_success_deployment_hook`` sees a non-streamed response before the caller
  does, so the tool intent reaches the sidecar before the agent can run the tool.
- ``async_post_call_streaming_deployment_hook`` only sees the *final* chunk in litellm 1.110
  (without the streamed tool names), so it announces "a tool call is coming" by name only
  when the names are known; the wrappers below see every chunk and always name the tools.
- The sync ``litellm.completion`` runs none of the deployment hooks, and no sync hook can
  change its request (checked in 1.110.2: ``log_pre_api_call`` sees a copy), so the
  callback warns once, at the first such call naming a program, and :func:`completion`
  tags the call and sends the intent itself; :func:`acompletion` does the same for async
  streams.
- ``log_success_event`` / ``async_log_success_event`` are not used: they may run after the
  caller already has the response (background logging), too late for readiness.

A program is named as LiteLLM users name a session, all meaning the same:
``metadata={"program_id": ...}``, ``metadata={"session_id": ...}``,
``litellm_session_id=...`` or an ``x-litellm-session-id`` header (``extra_headers``).

The control API is found from the ``sidecar_url`` argument, else ``THUNDER_SIDECAR_URL``,
else each call's ``api_base`` (the model is served by the sidecar's ``/v1``).

A callback cannot tell when a workflow ends, so the caller says so: ``end_session: True``
in the metadata of a session's last call releases it once the call is answered;
``callback.release(session_id)`` (or ``await callback.arelease(...)``) releases at any time;
``async with callback.program(pid) as metadata:`` releases however the block ends. Without
any of them, the sidecar's idle timeout reclaims it eventually. ``environment=`` or
``preset=`` gives each program a tool environment, declared at its first call.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger

from thunder_middleware.integrations.client import (
    AsyncThunderClient,
    ThunderClient,
    ToolIntent,
    control_url,
)
from thunder_middleware.integrations.control_api import not_delivered
from thunder_middleware.integrations.tagging import (
    PROGRAM_ID_FIELD,
    SESSION_ID_HEADER,
    SESSION_ID_PARAM,
    ends_session,
    header_value,
    program_id_from_metadata,
    session_id_from_metadata,
    tool_calls_of_response,
    tool_intents,
    with_program_body,
    with_program_headers,
)

log = logging.getLogger(__name__)
_sync_warning = threading.Event()

__all__ = [
    "StreamedToolCalls",
    "ThunderLiteLLMCallback",
    "acompletion",
    "completion",
    "program_id_of_kwargs",
    "tag_kwargs",
]


def _metadatas(kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    litellm_params = kwargs.get("litellm_params")
    return (kwargs.get("metadata"), kwargs.get("litellm_metadata"),
            litellm_params.get("metadata") if isinstance(litellm_params, Mapping) else None)


def program_id_of_kwargs(kwargs: Mapping[str, Any]) -> str | None:
    """The program of a LiteLLM call: ``program_id`` (metadata, litellm_metadata,
    extra_body), else the LiteLLM session (``litellm_session_id``, ``metadata.session_id``,
    the ``x-litellm-session-id`` header), the same sources the proxy reads."""
    metadatas = _metadatas(kwargs)
    for source in (*metadatas, kwargs.get("extra_body")):
        found = program_id_from_metadata(source)
        if found:
            return found
    litellm_params = kwargs.get("litellm_params")
    for holder in (kwargs, litellm_params if isinstance(litellm_params, Mapping) else {}):
        session = holder.get(SESSION_ID_PARAM)
        if isinstance(session, str) and session:
            return session
    for source in metadatas:
        found = session_id_from_metadata(source)
        if found:
            return found
    for headers in (kwargs.get("extra_headers"), kwargs.get("headers")):
        found = header_value(headers, SESSION_ID_HEADER)
        if found:
            return found
    return None


def tag_kwargs(kwargs: Mapping[str, Any], program_id: str) -> dict[str, Any]:
    """New kwargs whose request carries ``program_id`` in the body and the header."""
    tagged = dict(kwargs)
    tagged["extra_body"] = with_program_body(kwargs.get("extra_body"), program_id)
    tagged["extra_headers"] = with_program_headers(kwargs.get("extra_headers"), program_id)
    return tagged


class StreamedToolCalls:
    """Accumulates streamed tool-call deltas (name arrives once, arguments in pieces)."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.arguments: dict[int, str] = {}
        self.finished = False

    def add(self, chunk: Any) -> None:
        for choice in getattr(chunk, "choices", None) or ():
            delta = getattr(choice, "delta", None)
            for call in getattr(delta, "tool_calls", None) or ():
                index = getattr(call, "index", 0) or 0
                function = getattr(call, "function", None)
                name = getattr(function, "name", None)
                if name:
                    self.names[index] = name
                piece = getattr(function, "arguments", None)
                if piece:
                    self.arguments[index] = self.arguments.get(index, "") + piece
            if getattr(choice, "finish_reason", None):
                self.finished = True

    def intents(self) -> list[ToolIntent]:
        calls = [{"function": {"name": name, "arguments": self.arguments.get(i)}}
                 for i, name in sorted(self.names.items())]
        return tool_intents(calls)


class ThunderLiteLLMCallback(CustomLogger):
    """Tags async LiteLLM calls with their program and announces tool calls to the sidecar.

    ``program_id`` is a default for calls that name none; ``namespace`` prefixes every id
    (e.g. one per worker process) so unrelated loops sharing a sidecar key cannot collide.
    """

    #: programs whose sidecar is remembered for release (oldest forgotten first)
    REMEMBERED = 4096

    def __init__(self, sidecar_url: str | None = None, *, api_key: str | None = None,
                 program_id: str | None = None, namespace: str | None = None,
                 send_tool_intent: bool = True, environment: Mapping[str, Any] | None = None,
                 preset: str | None = None) -> None:
        super().__init__()
        # Without an explicit URL (argument or THUNDER_SIDECAR_URL) the control API is found
        # where the call goes: the model's api_base *is* the sidecar's /v1.
        self.sidecar_url = sidecar_url or os.environ.get("THUNDER_SIDECAR_URL")
        self.api_key = api_key
        self.client = AsyncThunderClient(self.sidecar_url, api_key=api_key, attempts=2)
        self._clients: dict[str, AsyncThunderClient] = {}
        self.default_program_id = program_id
        self.namespace = namespace
        self.send_tool_intent = send_tool_intent
        # programs inside program(): the sidecar their calls went to (None until a call)
        self._open: dict[str, str | None] = {}
        self.environment = dict(environment) if environment is not None else None
        self.preset = preset
        self._registered: OrderedDict[str, None] = OrderedDict()  # environment declared
        self._sidecar_of: OrderedDict[str, str] = OrderedDict()  # where a program's calls went

    def program_id_for(self, kwargs: Mapping[str, Any]) -> str | None:
        extra = kwargs.get("extra_body")
        if isinstance(extra, Mapping) and isinstance(extra.get(PROGRAM_ID_FIELD), str):
            return str(extra[PROGRAM_ID_FIELD])  # already tagged (a retry, or by a wrapper)
        found = program_id_of_kwargs(kwargs) or self.default_program_id
        return self._full_id(found) if found else found

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        program_id = self.program_id_for(kwargs)
        if not program_id:
            return None
        sidecar = sidecar_of_call(kwargs)
        if program_id in self._open and self._open[program_id] is None:
            self._open[program_id] = sidecar
        if sidecar is not None:
            _remember(self._sidecar_of, program_id, sidecar, self.REMEMBERED)
        await self._declare_environment(program_id, kwargs)
        return tag_kwargs(kwargs, program_id)

    async def _declare_environment(self, program_id: str, kwargs: Mapping[str, Any]) -> None:
        """Register the program with its environment at its first call (best effort)."""
        if (self.environment is None and self.preset is None) or program_id in self._registered:
            return
        _remember(self._registered, program_id, None, self.REMEMBERED)
        try:
            await self.client_for(kwargs).register(program_id, environment=self.environment,
                                                   preset=self.preset)
        except Exception as exc:  # the call still works; its tools run without readiness
            not_delivered(f"environment declaration of {program_id}", exc)

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: dict[str, Any]) -> None:
        """Runs on the sync path too, where nothing can tag the request: warn once."""
        if _sync_warning.is_set() or kwargs.get("call_type") != "completion":
            return
        optional = kwargs.get("optional_params")
        extra = optional.get("extra_body") if isinstance(optional, Mapping) else None
        if isinstance(extra, Mapping) and extra.get(PROGRAM_ID_FIELD):
            return  # tagged by the completion() wrapper
        named = program_id_of_kwargs(kwargs) or self.default_program_id
        if named and not _sync_warning.is_set():
            _sync_warning.set()  # once per process: LiteLLM calls this on copies of the logger
            log.warning(
                "litellm.completion (sync) cannot be tagged by ThunderLiteLLMCallback: the "
                "call of program %r reaches the sidecar as an anonymous request. Use "
                "thunder_middleware.integrations.litellm.completion(**same_kwargs) or "
                "litellm.acompletion. (Warned once.)", named)

    async def arelease(self, session_id: str) -> dict[str, Any] | None:
        """Release the program of ``session_id`` (the namespace applied) on the sidecar its
        calls went to; None if the sidecar has no live program of that id."""
        full_id = self._full_id(session_id)
        return await self._control_for(full_id).release(full_id)

    def release(self, session_id: str) -> dict[str, Any] | None:
        """Blocking :meth:`arelease`, for sync code."""
        full_id = self._full_id(session_id)
        url = self.sidecar_url or self._sidecar_of.get(full_id)
        with ThunderClient(url, api_key=self.api_key, attempts=2) as client:
            return client.release(full_id)

    def _control_for(self, full_id: str) -> AsyncThunderClient:
        sidecar = self._sidecar_of.get(full_id)
        return self.client_for({"api_base": sidecar} if sidecar else {})

    def _full_id(self, program_id: str) -> str:
        return f"{self.namespace}:{program_id}" if self.namespace else program_id

    @asynccontextmanager
    async def program(self, program_id: str) -> AsyncIterator[dict[str, str]]:
        """One agent workflow as one program; released however the block ends.

        Yields the ``metadata`` to pass to each call of the loop::

            async with callback.program("task-42") as metadata:
                while ...:
                    await litellm.acompletion(..., metadata=metadata)

        On exit (normal, exception or cancellation) the program is released on the sidecar
        its calls went to (``sidecar_url`` or ``THUNDER_SIDECAR_URL`` if given, else the
        calls' ``api_base``), so its memory and tool environment are freed at once. Release
        is best effort: a failure is logged, never raised over the block's own outcome (the
        idle timeout is the backstop). A block that made no call has nothing to release.
        """
        full_id = self._full_id(program_id)
        self._open.setdefault(full_id, None)
        try:
            yield {PROGRAM_ID_FIELD: program_id}
        finally:
            await self._release(full_id, self._open.pop(full_id, None))

    async def _release(self, full_id: str, sidecar: str | None) -> None:
        if self.sidecar_url:
            client = self.client
        elif sidecar is not None:
            client = self.client_for({"api_base": sidecar})
        else:
            log.debug("program %s made no call: nothing to release", full_id)
            return
        try:
            await client.release(full_id)
        except Exception as exc:
            not_delivered(f"release of program {full_id}", exc)

    def client_for(self, kwargs: Mapping[str, Any]) -> AsyncThunderClient:
        base = sidecar_of_call(kwargs)
        if self.sidecar_url or base is None:
            return self.client
        if base not in self._clients:
            self._clients[base] = AsyncThunderClient(base, api_key=self.api_key, attempts=2)
        return self._clients[base]

    async def announce(self, kwargs: Mapping[str, Any], intents: list[ToolIntent]) -> None:
        program_id = self.program_id_for(kwargs)
        if self.send_tool_intent and program_id:
            await _announce_async(self.client_for(kwargs), program_id, intents)

    async def _end_if_asked(self, kwargs: Mapping[str, Any]) -> None:
        program_id = self.program_id_for(kwargs)
        if program_id and ends_session(*_metadatas(kwargs)):
            await self._release(program_id, self._sidecar_of.get(program_id))

    async def async_post_call_success_deployment_hook(
        self, request_data: dict[str, Any], response: Any, call_type: Any
    ) -> Any:
        await self.announce(request_data, tool_intents(tool_calls_of_response(response)))
        await self._end_if_asked(request_data)
        return None

    async def async_post_call_streaming_deployment_hook(
        self, request_data: dict[str, Any], response_chunk: Any, call_type: Any
    ) -> Any:
        collector = StreamedToolCalls()
        collector.add(response_chunk)
        await self.announce(request_data, collector.intents())
        await self._end_if_asked(request_data)
        return None


def _remember(table: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)


async def _announce_async(client: AsyncThunderClient, program_id: str,
                          intents: list[ToolIntent]) -> None:
    """Best effort: a sidecar that cannot take the intent must not fail the LLM call."""
    if not intents:
        return
    try:
        await client.tool_intent(program_id, intents)
    except Exception as exc:  # the agent still works; its environment is readied later
        not_delivered(f"tool intent for {program_id}", exc)


def sidecar_of_call(kwargs: Mapping[str, Any]) -> str | None:
    """The sidecar a call goes to, from its ``api_base`` (``.../v1``), if it names one."""
    for source in (kwargs, kwargs.get("litellm_params")):
        if isinstance(source, Mapping) and isinstance(source.get("api_base"), str):
            return control_url(str(source["api_base"]))
    return None


def _sidecar_url(sidecar_url: str | None, kwargs: Mapping[str, Any]) -> str | None:
    return sidecar_url or os.environ.get("THUNDER_SIDECAR_URL") or sidecar_of_call(kwargs)


def _sync_client(sidecar_url: str | None, client: ThunderClient | None) -> ThunderClient:
    return client or ThunderClient(sidecar_url, attempts=2)


def _announce_sync(client: ThunderClient, program_id: str, intents: list[ToolIntent]) -> None:
    if not intents:
        return
    try:
        client.tool_intent(program_id, intents)
    except Exception as exc:
        not_delivered(f"tool intent for {program_id}", exc)


def _stream_with_intent(stream: Any, client: ThunderClient, program_id: str) -> Iterator[Any]:
    """Pass chunks through; announce the tools before the chunk that finishes the call."""
    collector = StreamedToolCalls()
    announced = False
    for chunk in stream:
        collector.add(chunk)
        if collector.finished and not announced:
            _announce_sync(client, program_id, collector.intents())
            announced = True
        yield chunk
    if not announced:
        _announce_sync(client, program_id, collector.intents())


async def _astream_with_intent(stream: Any, client: AsyncThunderClient,
                               program_id: str) -> AsyncIterator[Any]:
    collector = StreamedToolCalls()
    announced = False
    async for chunk in stream:
        collector.add(chunk)
        if collector.finished and not announced:
            await _announce_async(client, program_id, collector.intents())
            announced = True
        yield chunk
    if not announced:
        await _announce_async(client, program_id, collector.intents())


def completion(*, sidecar_url: str | None = None, client: ThunderClient | None = None,
               **kwargs: Any) -> Any:
    """``litellm.completion`` with the program tag and tool intent the sync path lacks."""
    program_id = program_id_of_kwargs(kwargs)
    if program_id is None:
        return litellm.completion(**kwargs)
    thunder = _sync_client(_sidecar_url(sidecar_url, kwargs), client)
    response = litellm.completion(**tag_kwargs(kwargs, program_id))
    if kwargs.get("stream"):
        return _stream_with_intent(response, thunder, program_id)
    _announce_sync(thunder, program_id, tool_intents(tool_calls_of_response(response)))
    if ends_session(*_metadatas(kwargs)):
        try:
            thunder.release(program_id)
        except Exception as exc:  # the idle timeout is the backstop
            not_delivered(f"release of program {program_id}", exc)
    return response


async def acompletion(*, sidecar_url: str | None = None,
                      client: AsyncThunderClient | None = None, **kwargs: Any) -> Any:
    """``litellm.acompletion`` that also names streamed tool calls to the sidecar.

    Non-streamed calls need nothing beyond the callback; this wrapper exists for streams,
    whose tool names the deployment hooks never see.
    """
    program_id = program_id_of_kwargs(kwargs)
    if program_id is None:
        return await litellm.acompletion(**kwargs)
    response = await litellm.acompletion(**tag_kwargs(kwargs, program_id))
    if not kwargs.get("stream"):
        if not any(isinstance(cb, ThunderLiteLLMCallback) for cb in litellm.callbacks):
            thunder = client or AsyncThunderClient(_sidecar_url(sidecar_url, kwargs),
                                                   attempts=2)
            await _announce_async(thunder, program_id,
                                  tool_intents(tool_calls_of_response(response)))
        return response
    thunder = client or AsyncThunderClient(_sidecar_url(sidecar_url, kwargs), attempts=2)
    return _astream_with_intent(response, thunder, program_id)
