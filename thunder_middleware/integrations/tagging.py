"""What every integration puts on a request, and what it reads back from a response.

The sidecar identifies a program by the body field ``program_id`` first, then the
``X-Program-Id`` header (contract 3). Integrations send both: the body field is what the
OpenAI SDK sends for ``extra_body``, and the header survives gateways that rebuild bodies.
Both are *merged* into what the caller already set, because the OpenAI SDK and ChatOpenAI
replace ``extra_body`` wholesale when a call passes its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from thunder_middleware.integrations.client import ToolIntent

PROGRAM_ID_FIELD = "program_id"
PROGRAM_ID_HEADER = "X-Program-Id"
# LiteLLM's session conventions: one session is one program
SESSION_ID_FIELD = "session_id"
SESSION_ID_PARAM = "litellm_session_id"
SESSION_ID_HEADER = "x-litellm-session-id"
# metadata flag on a session's last call: release its program once the call is answered
END_SESSION_FIELD = "end_session"


def with_program_body(extra_body: Mapping[str, Any] | None, program_id: str) -> dict[str, Any]:
    """A copy of ``extra_body`` with ``program_id`` set; every other key is kept."""
    return {**(extra_body or {}), PROGRAM_ID_FIELD: program_id}


def with_program_headers(headers: Mapping[str, str] | None, program_id: str) -> dict[str, str]:
    """A copy of ``headers`` with the program header set (any casing of it replaced)."""
    kept = {k: v for k, v in (headers or {}).items() if k.lower() != PROGRAM_ID_HEADER.lower()}
    return {**kept, PROGRAM_ID_HEADER: program_id}


def program_id_from_metadata(metadata: Any) -> str | None:
    """``metadata["program_id"]`` when it is a non-empty string."""
    if isinstance(metadata, Mapping):
        value = metadata.get(PROGRAM_ID_FIELD)
        if isinstance(value, str) and value:
            return value
    return None


def session_id_from_metadata(metadata: Any) -> str | None:
    """``metadata["session_id"]`` when it is a non-empty string."""
    if isinstance(metadata, Mapping):
        value = metadata.get(SESSION_ID_FIELD)
        if isinstance(value, str) and value:
            return value
    return None


def header_value(headers: Any, name: str) -> str | None:
    """A header of a mapping, by case-insensitive name, when it is a non-empty string."""
    if isinstance(headers, Mapping):
        for key, value in headers.items():
            if isinstance(key, str) and key.lower() == name.lower() \
                    and isinstance(value, str) and value:
                return value
    return None


def ends_session(*metadatas: Any) -> bool:
    """Whether any of ``metadatas`` carries ``end_session: true``."""
    return any(isinstance(m, Mapping) and m.get(END_SESSION_FIELD) is True for m in metadatas)


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _arguments(raw: Any) -> Mapping[str, Any] | str | None:
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return raw  # partial or free-form: pass through, the sidecar treats it as advisory
        return parsed if isinstance(parsed, Mapping) else raw
    if isinstance(raw, Mapping):
        return dict(raw)
    return None


def tool_intents(tool_calls: Iterable[Any] | None) -> list[ToolIntent]:
    """Tool intents from OpenAI tool calls (objects or dicts) or LangChain ``ToolCall`` dicts."""
    intents: list[ToolIntent] = []
    for call in tool_calls or ():
        function = _field(call, "function")
        if function is not None:  # OpenAI shape: {"function": {"name", "arguments"}}
            name, args = _field(function, "name"), _arguments(_field(function, "arguments"))
        else:  # LangChain shape: {"name", "args"}
            name, args = _field(call, "name"), _arguments(_field(call, "args"))
        if isinstance(name, str) and name:
            intents.append(ToolIntent(name, args))
    return intents


def tool_calls_of_response(response: Any) -> list[Any]:
    """The tool calls of every choice of an OpenAI-shaped chat completion (object or dict)."""
    calls: list[Any] = []
    for choice in _field(response, "choices") or ():
        message = _field(choice, "message")
        calls.extend(_field(message, "tool_calls") or () if message is not None else ())
    return calls
