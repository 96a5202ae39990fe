"""Response bodies and SSE chunks in the exact shapes vLLM's OpenAI server emits.

Kept as plain dict builders (no I/O) so the serving code reads as a sequence of protocol
events, and so the shapes can be compared field by field with vLLM's ``protocol.py``:
``chat.completion`` / ``chat.completion.chunk`` / ``text_completion`` objects, ``usage``
with ``prompt_tokens_details.cached_tokens``, the usage-only final chunk (``choices: []``)
of ``stream_options.include_usage``, and the ``data: [DONE]`` terminator.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thunder_middleware.twin.content import PlannedToolCall, TokenPiece, ToolCallDelta

SSE_DONE = "data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def _tool_call_dict(call: PlannedToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def chat_completion(
    response_id: str,
    model: str,
    content: str | None,
    tool_calls: tuple[PlannedToolCall, ...],
    finish_reason: str,
    usage: Usage,
) -> dict[str, Any]:
    message = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "tool_calls": [_tool_call_dict(call) for call in tool_calls],
        "reasoning_content": None,
    }
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage.as_dict(),
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


def text_completion(
    response_id: str, model: str, choices: Sequence[tuple[str, str]], usage: Usage
) -> dict[str, Any]:
    """``choices``: (text, finish_reason) per prompt, in prompt order."""
    return {
        "id": response_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            for index, (text, finish_reason) in enumerate(choices)
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage.as_dict(),
        "kv_transfer_params": None,
    }


class ChunkWriter:
    """The SSE chunks of one streamed response (chat or completion)."""

    def __init__(self, response_id: str, model: str, *, chat: bool) -> None:
        self.response_id = response_id
        self.model = model
        self.chat = chat
        self.created = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> str:
        payload: dict[str, Any] = {
            "id": self.response_id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = usage.as_dict()
        return sse(payload)

    def role(self) -> str:
        """vLLM's first chat chunk: the role and empty content."""
        delta = {"role": "assistant", "content": ""}
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def chat_delta(self, pieces: list[TokenPiece], finish_reason: str | None) -> str | None:
        """One chunk for the tokens of one step (None if they show nothing and finish
        nothing, e.g. nothing to say)."""
        text = "".join(piece.text for piece in pieces)
        calls = _merge_tool_deltas(
            [piece.tool_call for piece in pieces if piece.tool_call is not None]
        )
        delta: dict[str, Any] = {}
        if text or (not calls and finish_reason is not None):
            delta["content"] = text
        if calls:
            delta["tool_calls"] = [_tool_call_delta(call) for call in calls]
        if not delta and finish_reason is None:
            return None
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        if finish_reason is not None:
            choice["stop_reason"] = None
        return self._chunk([choice])

    def text_delta(self, index: int, text: str, finish_reason: str | None) -> str:
        choice = {
            "index": index,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
        return self._chunk([choice])

    def usage(self, usage: Usage) -> str:
        """The final chunk of ``stream_options.include_usage``: no choices, only usage."""
        return self._chunk([], usage)


def _merge_tool_deltas(deltas: list[ToolCallDelta]) -> list[ToolCallDelta]:
    """One delta per tool call (several tokens may land in one chunk); empty ones dropped."""
    merged: dict[int, ToolCallDelta] = {}
    for delta in deltas:
        known = merged.get(delta.index)
        if known is None:
            merged[delta.index] = delta
        else:
            merged[delta.index] = dataclasses.replace(
                known, arguments=known.arguments + delta.arguments
            )
    return [d for d in merged.values() if d.id is not None or d.arguments]


def _tool_call_delta(call: ToolCallDelta) -> dict[str, Any]:
    if call.id is not None:
        return {
            "index": call.index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
    return {"index": call.index, "function": {"arguments": call.arguments}}


def error_body(
    message: str, error_type: str, code: int, param: str | None = None
) -> dict[str, Any]:
    """OpenAI/vLLM error JSON; ``code`` is the HTTP status, as vLLM sets it."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
