"""A ChatML-like chat template whose every message boundary is a hard token boundary.

The template decides whether a multi-turn conversation hits the prefix cache: turn k+1's
prompt must start with exactly the tokens turn k's prompt and reply occupied in the KV
cache. Each message is rendered as ``<|im_start|>{role}\\n{body}<|im_end|>\\n``, where the
body starts after a newline and ends before a special token, so it tokenizes alone (see
:mod:`.tokenizer`). The generation prompt ``<|im_start|>assistant\\n`` is exactly the head of
the rendered assistant message, so the reply the engine generates (its body and
``<|im_end|>``) is what the next turn's prompt holds at that place.

Tool calls are rendered from ``name`` and the *parsed* arguments re-serialized canonically
(``json.dumps`` defaults): clients such as LangChain parse the arguments and serialize them
again, and the canonical form makes both sides give the same text. Tool-call ids are left
out (as in Qwen's template) because they carry no meaning for the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TOOL_CALL_OPEN = "<|tool_call|>"
TOOL_CALL_CLOSE = "<|/tool_call|>"
TOOL_RESULT_OPEN = "<|tool_result|>"
TOOL_RESULT_CLOSE = "<|/tool_result|>"
GENERATION_PROMPT = f"{IM_START}assistant\n"


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, None, or a list of content parts
    (text parts joined by newlines, as vLLM does; non-text parts are ignored)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type", "text") == "text"
        ]
        return "\n".join(texts)
    return str(content)


def canonical_arguments(arguments: Any) -> Any:
    """Arguments as a JSON value when they parse, else the raw string."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def render_tool_call(name: str, arguments: Any) -> str:
    """One tool call as the model "writes" it; also used by the content layer to
    generate it, which is what keeps generation and the next prompt identical."""
    payload = json.dumps({"name": name, "arguments": canonical_arguments(arguments)})
    return f"{TOOL_CALL_OPEN}{payload}{TOOL_CALL_CLOSE}"


def _tool_calls_text(message: Mapping[str, Any]) -> str:
    calls = message.get("tool_calls") or []
    parts = []
    for call in calls:
        if not isinstance(call, Mapping):
            continue
        function = call.get("function") or {}
        parts.append(render_tool_call(str(function.get("name", "")), function.get("arguments")))
    return "".join(parts)


def _tools_preamble(tools: Sequence[Mapping[str, Any]]) -> str:
    lines = "\n".join(json.dumps(tool, sort_keys=True) for tool in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n"
        f"Available functions, one JSON object per line:\n{lines}"
    )


def render_message(message: Mapping[str, Any]) -> str:
    role = str(message.get("role", "user"))
    body = content_text(message.get("content"))
    if role == "assistant":
        body += _tool_calls_text(message)
    elif role == "tool":
        body = f"{TOOL_RESULT_OPEN}{body}{TOOL_RESULT_CLOSE}"
    elif role == "developer":
        role = "system"
    return f"{IM_START}{role}\n{body}{IM_END}\n"


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text of a conversation. Tools go into the system message (first), so
    a fixed tool list is part of every turn's shared prefix."""
    parts: list[str] = []
    rest = list(messages)
    if tools:
        system = ""
        if rest and rest[0].get("role") in ("system", "developer"):
            system = content_text(rest.pop(0).get("content")) + "\n\n"
        parts.append(f"{IM_START}system\n{system}{_tools_preamble(tools)}{IM_END}\n")
    parts.extend(render_message(message) for message in rest)
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)
