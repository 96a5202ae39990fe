"""Server-sent events from the backend: split into events, read usage, strip what was not asked.

The backend's byte stream may cut events anywhere, so bytes are re-framed into whole events
before anything is inspected; events are passed on one by one as soon as they are complete.
Only events that carry a non-null ``usage`` are parsed, so a long stream costs one substring
search per event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from thunder_middleware.policy.types import Usage

DONE_EVENT = b"data: [DONE]\n\n"
_NULL_USAGE = (b'"usage":null', b'"usage": null')


class SSEEventSplitter:
    """Accumulates bytes and yields complete ``data: ...\\n\\n`` events."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        if b"\r\n" in self._buffer:
            self._buffer = self._buffer.replace(b"\r\n", b"\n")
        events: list[bytes] = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return events
            events.append(self._buffer[: end + 2])
            self._buffer = self._buffer[end + 2 :]

    def remainder(self) -> bytes:
        """Bytes of an unterminated last event (a stream cut midway)."""
        rest, self._buffer = self._buffer, b""
        return rest


def event_payload(event: bytes) -> bytes | None:
    """The data of a single-line ``data:`` event, or None for comments and other fields."""
    if not event.startswith(b"data:"):
        return None
    return event[5:].strip()


def usage_from_dict(usage: dict[str, Any] | None) -> Usage | None:
    """OpenAI usage -> policy Usage (cached tokens from prompt_tokens_details)."""
    if not isinstance(usage, dict):
        return None
    try:
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(cached or 0),
        )
    except (TypeError, ValueError):
        return None


@dataclass(slots=True)
class FilteredEvent:
    """One event after inspection: what to send on (None = drop) and any usage it held."""

    forward: bytes | None
    usage: Usage | None
    is_content: bool


def filter_event(event: bytes, client_wants_usage: bool) -> FilteredEvent:
    """Read usage out of an event and strip it when the client did not ask for it."""
    payload = event_payload(event)
    if payload is None or payload == b"[DONE]":
        return FilteredEvent(event, None, False)
    if b'"usage"' not in payload or any(null in payload for null in _NULL_USAGE):
        return FilteredEvent(event, None, True)
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return FilteredEvent(event, None, True)
    if not isinstance(chunk, dict):
        return FilteredEvent(event, None, True)
    usage = usage_from_dict(chunk.get("usage"))
    has_choices = bool(chunk.get("choices"))
    if client_wants_usage or usage is None:
        return FilteredEvent(event, usage, has_choices)
    if not has_choices:
        return FilteredEvent(None, usage, False)  # the usage-only chunk we asked for
    chunk.pop("usage", None)  # continuous usage stats the client did not ask for
    return FilteredEvent(b"data: " + orjson.dumps(chunk) + b"\n\n", usage, True)


def error_event(message: str, code: str = "upstream_stream_broken") -> bytes:
    """An OpenAI-style error as an SSE event: what a client sees when a stream breaks."""
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"
