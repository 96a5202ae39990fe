"""LiteLLM *proxy* integration: a callback loaded from ``litellm_settings.callbacks``.

The proxy serves many callers through one set of deployment credentials, so the sidecar
would see a single tenant. This hook therefore namespaces every program id with the
caller's team (or key alias, or hashed key) before it leaves the proxy: two teams that both
call their program ``task-1`` get two programs.

Identity, in order: ``metadata.program_id`` from the caller, a top-level ``program_id`` body
field (what ``extra_body`` of an OpenAI client sends), the ``X-Program-Id`` header, then the
LiteLLM session id (``litellm_session_id``, ``metadata.session_id``, the
``x-litellm-session-id`` header), the same sources the SDK callback reads.

Callers cannot know their namespace (it hashes their key), so the hook releases for them:
``metadata: {"end_session": true}`` on a session's last call releases the namespaced
program once the call is answered. ``environment=`` / ``preset=`` (in the callback module:
``THUNDER_PROXY_PRESET``) give each program a tool environment at its first call.

The proxy only runs ``async_pre_call_hook`` for classes that define it *themselves* (it
checks the class ``__dict__``, litellm 1.110), so a subclass must define it again.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from thunder_middleware.integrations.client import AsyncThunderClient, ToolIntent
from thunder_middleware.integrations.control_api import not_delivered
from thunder_middleware.integrations.litellm import StreamedToolCalls
from thunder_middleware.integrations.tagging import (
    PROGRAM_ID_FIELD,
    PROGRAM_ID_HEADER,
    SESSION_ID_HEADER,
    ends_session,
    program_id_from_metadata,
    tool_calls_of_response,
    tool_intents,
    with_program_body,
    with_program_headers,
)

log = logging.getLogger(__name__)

__all__ = ["ThunderProxyHook", "caller_program_id", "tenant_of"]


def _header(data: Mapping[str, Any], name: str) -> str | None:
    request = data.get("proxy_server_request")
    headers = request.get("headers") if isinstance(request, Mapping) else None
    if not isinstance(headers, Mapping):
        return None
    for key, value in headers.items():
        if key.lower() == name.lower() and isinstance(value, str) and value:
            return value
    return None


def caller_program_id(data: Mapping[str, Any]) -> str | None:
    """The un-namespaced program id the caller asked for, if any."""
    for key in ("metadata", "litellm_metadata"):
        found = program_id_from_metadata(data.get(key))
        if found:
            return found
    body_field = data.get(PROGRAM_ID_FIELD)
    if isinstance(body_field, str) and body_field:
        return body_field
    found = _header(data, PROGRAM_ID_HEADER)
    if found:
        return found
    session = data.get("litellm_session_id")
    if isinstance(session, str) and session:
        return session
    for key in ("metadata", "litellm_metadata"):
        metadata = data.get(key)
        if isinstance(metadata, Mapping) and isinstance(metadata.get("session_id"), str) \
                and metadata["session_id"]:
            return str(metadata["session_id"])
    return _header(data, SESSION_ID_HEADER)


def tenant_of(user_api_key_dict: Any) -> str:
    """Team, else key alias, else a short hash of the (already hashed) key; ``default``."""
    for attribute in ("team_id", "key_alias"):
        value = getattr(user_api_key_dict, attribute, None)
        if isinstance(value, str) and value:
            return value
    token = getattr(user_api_key_dict, "token", None) or getattr(user_api_key_dict, "api_key",
                                                                 None)
    if isinstance(token, str) and token:
        return "key-" + hashlib.sha256(token.encode()).hexdigest()[:12]
    return "default"


def _tagged_program(data: Mapping[str, Any]) -> str | None:
    extra = data.get("extra_body")
    if isinstance(extra, Mapping) and isinstance(extra.get(PROGRAM_ID_FIELD), str):
        return str(extra[PROGRAM_ID_FIELD])
    return None


class ThunderProxyHook(CustomLogger):
    """Namespaced program identity and tool intent for requests through the LiteLLM proxy."""

    REMEMBERED = 4096  # programs whose environment declaration is remembered

    def __init__(self, sidecar_url: str | None = None, *, api_key: str | None = None,
                 separator: str = ":", environment: Mapping[str, Any] | None = None,
                 preset: str | None = None) -> None:
        super().__init__()
        self.client = AsyncThunderClient(sidecar_url, api_key=api_key, attempts=2)
        self.separator = separator
        self.environment = dict(environment) if environment is not None else None
        self.preset = preset
        self._registered: OrderedDict[str, None] = OrderedDict()

    async def _declare_environment(self, program_id: str) -> None:
        if (self.environment is None and self.preset is None) or program_id in self._registered:
            return
        self._registered[program_id] = None
        while len(self._registered) > self.REMEMBERED:
            self._registered.popitem(last=False)
        try:
            await self.client.register(program_id, environment=self.environment,
                                       preset=self.preset)
        except Exception as exc:  # the call still works; its tools run without readiness
            not_delivered(f"environment declaration of {program_id}", exc)

    async def _end_if_asked(self, data: Mapping[str, Any]) -> None:
        program_id = _tagged_program(data)
        if program_id and ends_session(data.get("metadata"), data.get("litellm_metadata")):
            try:
                await self.client.release(program_id)
            except Exception as exc:  # the sidecar's idle timeout is the backstop
                not_delivered(f"release of {program_id}", exc)

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any] | None:
        program_id = caller_program_id(data)
        if program_id is None:
            return None
        scoped = f"{tenant_of(user_api_key_dict)}{self.separator}{program_id}"
        data.pop(PROGRAM_ID_FIELD, None)  # never forward the caller's un-namespaced id
        data["extra_body"] = with_program_body(data.get("extra_body"), scoped)
        data["extra_headers"] = with_program_headers(data.get("extra_headers"), scoped)
        await self._declare_environment(scoped)
        return data

    async def _announce(self, program_id: str | None, intents: list[ToolIntent]) -> None:
        if not (program_id and intents):
            return
        try:
            await self.client.tool_intent(program_id, intents)
        except Exception as exc:  # readiness is an optimisation, never a failure
            not_delivered(f"tool intent for {program_id}", exc)

    async def async_post_call_success_hook(self, data: dict[str, Any], user_api_key_dict: Any,
                                           response: Any) -> Any:
        await self._announce(_tagged_program(data),
                             tool_intents(tool_calls_of_response(response)))
        await self._end_if_asked(data)
        return None

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        program_id = _tagged_program(request_data)
        collector = StreamedToolCalls()
        announced = False
        async for chunk in response:
            collector.add(chunk)
            if collector.finished and not announced:
                await self._announce(program_id, collector.intents())
                announced = True
            yield chunk
        if not announced:
            await self._announce(program_id, collector.intents())
        await self._end_if_asked(request_data)
