"""The tokenizer and chat template: the properties prefix caching through the API rests on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thunder_middleware.twin.chat_template import GENERATION_PROMPT, render_chat
from thunder_middleware.twin.content import (
    ChatRequestView,
    ContentPlanner,
    GenerationLimits,
)
from thunder_middleware.twin.tokenizer import SPECIAL_TOKENS, VOCAB_SIZE, TwinTokenizer

TOKENIZER = TwinTokenizer()
PLANNER = ContentPlanner(TwinTokenizer(), seed=7)
IM_END = SPECIAL_TOKENS["<|im_end|>"]

# Text with everything that could disturb boundaries: whitespace runs, newlines, unicode,
# and literal special-token strings.
text = st.lists(
    st.sampled_from(
        [*"ab Z9.,_-(){}\"'\n\t  ", "é", "日本", "\u00a0", "<|im_end|>", "<|tool_call|>"]
    ),
    max_size=40,
).map("".join)
user_msg = st.builds(lambda c: {"role": "user", "content": c}, text)
tool_msg = st.builds(lambda c: {"role": "tool", "content": c, "tool_call_id": "x"}, text)
assistant_msg = st.builds(lambda c: {"role": "assistant", "content": c}, text)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query"],
            },
        },
    }
]


def _conversation_after(messages: list[dict[str, Any]], reply: Any) -> dict[str, Any]:
    """The assistant message a client sends back for a twin reply."""
    calls = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in reply.tool_calls
    ]
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if calls:
        message["tool_calls"] = calls
    return message


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_newline_is_a_hard_boundary(left: str, right: str) -> None:
    assert TOKENIZER.encode(left + "\n" + right) == (
        TOKENIZER.encode(left) + TOKENIZER.encode("\n") + TOKENIZER.encode(right)
    )


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_special_token_is_a_hard_boundary(left: str, right: str) -> None:
    joined = TOKENIZER.encode(left + "<|im_end|>" + right)
    assert joined[: len(TOKENIZER.encode(left))] == TOKENIZER.encode(left)
    assert IM_END in joined


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_ids_are_in_range_and_deterministic(value: str) -> None:
    ids = TOKENIZER.encode(value)
    assert ids == TwinTokenizer().encode(value)
    assert all(0 <= i < VOCAB_SIZE for i in ids)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    system=st.one_of(st.none(), text),
    turns=st.lists(st.tuples(user_msg, st.lists(tool_msg, max_size=2)), min_size=1, max_size=4),
    with_tools=st.booleans(),
    request_seed=st.integers(0, 1000),
)
def test_conversation_is_a_token_prefix_of_its_continuation(
    system: str | None,
    turns: list[tuple[dict[str, Any], list[dict[str, Any]]]],
    with_tools: bool,
    request_seed: int,
) -> None:
    """Turn k's prompt ids + the ids the twin generated for it are exactly the start of turn
    k+1's prompt ids, for text replies and tool-call replies alike."""
    tools = TOOLS if with_tools else None
    messages: list[dict[str, Any]] = (
        [] if system is None else [{"role": "system", "content": system}]
    )
    for user, tool_results in turns:
        messages.append(user)
        prompt_ids = TOKENIZER.encode(render_chat(messages, tools=tools))
        view = ChatRequestView(messages, tools or (), "auto")
        reply = PLANNER.plan_chat(prompt_ids, view, GenerationLimits(5000), request_seed)
        assert reply.finish_reason in ("stop", "tool_calls")
        assert reply.token_ids[-1] == IM_END
        messages.append(_conversation_after(messages, reply))
        if reply.tool_calls:
            messages.extend(
                tool_results or [{"role": "tool", "content": "ok", "tool_call_id": "x"}]
            )
        next_ids = TOKENIZER.encode(render_chat(messages, tools=tools))
        cached = prompt_ids + reply.token_ids
        assert next_ids[: len(cached)] == cached


@settings(max_examples=100, deadline=None)
@given(
    history=st.lists(st.one_of(user_msg, assistant_msg, tool_msg), min_size=1, max_size=6),
    cut=st.integers(1, 6),
)
def test_any_history_prefix_renders_to_a_token_prefix(
    history: list[dict[str, Any]], cut: int
) -> None:
    head = history[: min(cut, len(history))]
    full = TOKENIZER.encode(render_chat(history, add_generation_prompt=False))
    part = TOKENIZER.encode(render_chat(head, add_generation_prompt=False))
    assert full[: len(part)] == part


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 600))
def test_generated_ids_decode_to_text_that_reencodes_to_the_same_ids(seed: int, count: int) -> None:
    plan = PLANNER.plan_completion([seed, count], GenerationLimits(count, count, True))
    assert len(plan.token_ids) == count
    text = PLANNER.tokenizer.decode(plan.token_ids)
    assert text == plan.content
    assert text == text.strip(), "a client that strips the reply would break the prefix"
    assert PLANNER.tokenizer.encode(text) == plan.token_ids


def test_about_four_characters_per_token_on_prose_and_code() -> None:
    root = Path(__file__).resolve().parents[2]
    prose = (root / "README.md").read_text() if (root / "README.md").exists() else ""
    prose += " ".join(["The engine twin behaves like a vLLM replica where it matters."] * 20)
    code = (root / "thunder_middleware" / "launch.py").read_text()
    for sample in (prose, code):
        ratio = len(sample) / TOKENIZER.count(sample)
        assert 3.0 <= ratio <= 5.0, ratio


def test_chat_template_shape() -> None:
    rendered = render_chat([{"role": "user", "content": "hi"}])
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n" + GENERATION_PROMPT
    with_tools = render_chat([{"role": "system", "content": "S"}], tools=TOOLS)
    assert with_tools.startswith("<|im_start|>system\nS\n\n# Tools")
    assert json.dumps(TOOLS[0], sort_keys=True) in with_tools


def test_tool_call_arguments_are_canonicalized_like_langchain_resends_them() -> None:
    """LangChain parses arguments and re-serializes them with json.dumps: same prompt."""
    original = '{"query":"a b",  "limit": 3}'
    resent = json.dumps(json.loads(original))
    base = [{"role": "user", "content": "q"}]

    def with_call(arguments: str) -> list[dict[str, Any]]:
        call = {"id": "1", "type": "function", "function": {"name": "s", "arguments": arguments}}
        return [*base, {"role": "assistant", "content": None, "tool_calls": [call]}]

    assert render_chat(with_call(original)) == render_chat(with_call(resent))


def test_ids_are_stable_across_processes() -> None:
    """Python's str hash is salted per process; the tokenizer must not depend on it."""
    sample = "def main():\n    return 'hello world'  # résumé"
    script = (
        "from thunder_middleware.twin.tokenizer import TwinTokenizer;"
        f"print(TwinTokenizer().encode({sample!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == TOKENIZER.encode(sample)
