"""Request bodies: parse, check the fields the sidecar relies on, rewrite for the backend.

The sidecar validates only what it reads itself (messages/prompt, stream, stream_options,
program_id); everything else is the backend's business and is forwarded untouched, so new
OpenAI fields keep working. Re-serialisation is skipped when nothing changed: the raw bytes
go upstream as they came, which keeps the hot path short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from thunder_middleware.sidecar.errors import bad_request

Route = Literal["chat", "completions"]


@dataclass(slots=True)
class ParsedRequest:
    """What the proxy needs to know about one OpenAI request."""

    body: dict[str, Any]
    upstream_body: bytes
    stream: bool
    client_wants_usage: bool
    prompt_chars: int
    prompt_tokens_hint: int | None = None  # exact, when the prompt is given as token ids


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body must be one JSON object; anything else is a 400, never a 500."""
    if not raw:
        raise bad_request("request body is empty; a JSON object is expected", code="empty_body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", code="invalid_type")
    return body


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part.get("text") or "") if isinstance(part, dict) else len(str(part))
            for part in content
        )
    return 0 if content is None else len(str(content))


def prompt_chars(body: dict[str, Any], route: Route) -> int:
    """Characters of prompt text: the policy's token estimate before the first usage."""
    if route == "chat":
        return sum(
            _content_chars(message.get("content")) + _content_chars(message.get("tool_calls"))
            for message in body["messages"]
        )
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(item) if isinstance(item, str | list) else 1 for item in prompt)


def prompt_token_ids_count(body: dict[str, Any], route: Route) -> int | None:
    """Token-id prompts (``[1, 2, ...]`` or a list of them) carry their exact size, which
    beats any characters-per-token estimate for a program's first request."""
    prompt = body.get("prompt") if route == "completions" else None
    if not isinstance(prompt, list) or not prompt:
        return None
    if all(isinstance(item, int) for item in prompt):
        return len(prompt)
    if all(isinstance(item, list) and all(isinstance(i, int) for i in item) for item in prompt):
        return sum(len(item) for item in prompt)
    return None


def _check_content(content: Any, param: str) -> None:
    """The prompt text the sidecar counts must be text: a string, or parts whose ``text``
    (when present) is a string."""
    if not isinstance(content, list):
        return
    for index, part in enumerate(content):
        if isinstance(part, dict) and "text" in part and not isinstance(part["text"], str):
            raise bad_request(f"{param}[{index}].text must be a string",
                              param=f"{param}[{index}].text", code="invalid_type")


def _check_fields(body: dict[str, Any], route: Route) -> None:
    if route == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("messages must be a non-empty list", param="messages",
                              code="invalid_type")
        if not all(isinstance(message, dict) for message in messages):
            raise bad_request("every message must be an object", param="messages",
                              code="invalid_type")
        for index, message in enumerate(messages):
            _check_content(message.get("content"), f"messages[{index}].content")
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
            raise bad_request("prompt must be a string or a non-empty list", param="prompt",
                              code="invalid_type")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise bad_request("stream must be a boolean", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options must be an object", param="stream_options",
                          code="invalid_type")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad_request("metadata must be an object", param="metadata", code="invalid_type")


def prepare_request(
    raw: bytes, route: Route, *, strip_program_id: bool = False
) -> ParsedRequest:
    """Parse and check a body; decide what goes upstream.

    A streaming client that did not ask for usage gets it asked for anyway (the policy
    needs token counts); the proxy strips that final chunk before the client sees it.
    """
    body = parse_json_object(raw)
    _check_fields(body, route)
    stream = bool(body.get("stream"))
    options = body.get("stream_options") or {}
    # only a literal true asks for usage; anything else ("no", 1, null) is not a request
    # for it, and the upstream is always asked with a literal true (the policy needs the
    # counts, and a backend may refuse an odd value)
    client_wants_usage = options.get("include_usage") is True if stream else True
    changed = False
    upstream = body
    if stream and options.get("include_usage") is not True:
        upstream = {**body, "stream_options": {**options, "include_usage": True}}
        changed = True
    if strip_program_id and "program_id" in upstream:
        upstream = {key: value for key, value in upstream.items() if key != "program_id"}
        changed = True
    return ParsedRequest(
        body=body,
        upstream_body=orjson.dumps(upstream) if changed else raw,
        stream=stream,
        client_wants_usage=client_wants_usage,
        prompt_chars=prompt_chars(body, route),
        prompt_tokens_hint=prompt_token_ids_count(body, route),
    )
