"""The content layer: lengths honour the request's limits, tool calls fit their schemas, tool
turns run out so agent loops end."""

from __future__ import annotations

import json
import random
import statistics
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thunder_middleware.twin.chat_template import render_chat
from thunder_middleware.twin.content import (
    TOOL_BUDGET_RANGE,
    ChatRequestView,
    ContentPlanner,
    GenerationLimits,
    ReplyPlan,
)
from thunder_middleware.twin.json_schema_args import sample_arguments
from thunder_middleware.twin.responses import ChunkWriter
from thunder_middleware.twin.tokenizer import SPECIAL_TOKENS, TwinTokenizer

PLANNER = ContentPlanner(TwinTokenizer(), seed=0)
ENCODE = PLANNER.tokenizer.encode

NESTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "$defs": {
        "Location": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 2}, "zip": {"type": "integer"}},
            "required": ["city"],
        }
    },
    "properties": {
        "where": {"$ref": "#/$defs/Location"},
        "units": {"enum": ["metric", "imperial"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "verbose": {"type": "boolean"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "filters": {
            "type": "object",
            "properties": {"lang": {"type": "string", "maxLength": 5}},
            "required": ["lang"],
        },
    },
    "required": ["where", "units", "days", "tags", "filters"],
}


def _tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def _plan(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    choice: Any = "auto",
    limits: GenerationLimits | None = None,
    planner: ContentPlanner = PLANNER,
) -> ReplyPlan:
    prompt = ENCODE(render_chat(messages, tools=tools or None))
    return planner.plan_chat(
        prompt, ChatRequestView(messages, tools, choice), limits or GenerationLimits(8000)
    )


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), prompt_seed=st.integers(0, 10**6), chat=st.booleans())
def test_ignore_eos_with_min_equal_max_gives_exactly_n_tokens(
    n: int, prompt_seed: int, chat: bool
) -> None:
    """What load generators send: max_tokens = min_tokens = n, ignore_eos."""
    limits = GenerationLimits(max_tokens=n, min_tokens=n, ignore_eos=True)
    if chat:
        messages = [{"role": "user", "content": f"question {prompt_seed}"}]
        plan = _plan(messages, [], limits=limits)
    else:
        plan = PLANNER.plan_completion([prompt_seed, 1, 2], limits)
    assert len(plan.token_ids) == n
    assert len(plan.pieces) == n
    assert plan.finish_reason == "length"


@settings(max_examples=60, deadline=None)
@given(min_tokens=st.integers(0, 400), extra=st.integers(0, 400), prompt_seed=st.integers(0, 10**6))
def test_min_and_max_tokens_bound_the_reply(min_tokens: int, extra: int, prompt_seed: int) -> None:
    max_tokens = min_tokens + extra + 1
    plan = PLANNER.plan_completion([prompt_seed], GenerationLimits(max_tokens, min_tokens))
    assert min_tokens <= len(plan.token_ids) <= max_tokens
    if plan.finish_reason == "stop":
        assert plan.token_ids[-1] == PLANNER.tokenizer.eos_token_id
        assert len(plan.token_ids) - 1 >= min_tokens  # EOS only after min_tokens
    else:
        assert plan.finish_reason == "length"
        assert len(plan.token_ids) == max_tokens


def test_natural_lengths_follow_the_documented_distribution() -> None:
    lengths = [
        len(PLANNER.plan_completion([i, 7], GenerationLimits(10_000)).token_ids) - 1
        for i in range(400)
    ]
    assert 130 <= statistics.median(lengths) <= 195
    assert min(lengths) >= 1 and max(lengths) <= 4096
    assert len(set(lengths)) > 100  # sampled, not constant


def test_replies_are_deterministic_per_prompt_and_vary_across_prompts() -> None:
    a = PLANNER.plan_completion([1, 2, 3], GenerationLimits(500))
    b = ContentPlanner(TwinTokenizer(), seed=0).plan_completion([1, 2, 3], GenerationLimits(500))
    c = PLANNER.plan_completion([1, 2, 4], GenerationLimits(500))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_sampled_arguments_satisfy_the_schema(seed: int) -> None:
    arguments = sample_arguments(NESTED_SCHEMA, random.Random(seed))
    jsonschema.validate(arguments, NESTED_SCHEMA)


json_type = st.sampled_from(["string", "integer", "number", "boolean"])
leaf = st.one_of(
    st.builds(lambda t: {"type": t}, json_type),
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-50, 50),
        st.integers(0, 20),
    ),
    st.builds(lambda values: {"enum": values}, st.lists(st.text(max_size=5), min_size=1)),
)
schemas = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.builds(lambda items: {"type": "array", "items": items, "maxItems": 3}, children),
        st.builds(
            lambda props, required: {
                "type": "object",
                "properties": props,
                "required": [k for k in props if required],
            },
            st.dictionaries(st.text("abcdef", min_size=1, max_size=4), children, max_size=4),
            st.booleans(),
        ),
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(schema=schemas, seed=st.integers(0, 1000))
def test_arguments_fit_arbitrary_nested_schemas(schema: dict[str, Any], seed: int) -> None:
    root = {"type": "object", "properties": {"value": schema}, "required": ["value"]}
    arguments = sample_arguments(root, random.Random(seed))
    jsonschema.validate(arguments, root)


def _run_agent_loop(
    first_user: str, tools: list[dict[str, Any]], planner: ContentPlanner = PLANNER
) -> tuple[int, ReplyPlan]:
    """Feed the twin's replies back as a client would, until it answers plainly."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": first_user},
    ]
    for turn in range(64):
        plan = _plan(messages, tools, planner=planner)
        if plan.finish_reason != "tool_calls":
            return turn, plan
        call = plan.tool_calls[0]
        schema = next(
            t["function"]["parameters"] for t in tools if t["function"]["name"] == call.name
        )
        jsonschema.validate(json.loads(call.arguments), schema)
        assert plan.token_ids[-1] == SPECIAL_TOKENS["<|im_end|>"]
        messages.append(
            {
                "role": "assistant",
                "content": plan.content,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "result " * turn})
    raise AssertionError("the agent loop did not terminate")


def test_tool_turn_budget_ends_every_loop_within_range() -> None:
    tools = [_tool("lookup", NESTED_SCHEMA), _tool("ping", {"type": "object", "properties": {}})]
    turns = [_run_agent_loop(f"task {i}", tools)[0] for i in range(40)]
    low, high = TOOL_BUDGET_RANGE
    assert all(low <= t <= high for t in turns), turns
    assert len(set(turns)) >= 3  # the budget is sampled per conversation
    # the same conversation gets the same budget
    assert _run_agent_loop("task 3", tools)[0] == turns[3]


def test_configured_tool_turns_set_the_loop_length() -> None:
    tools = [_tool("ping", {"type": "object", "properties": {}})]
    long_agents = ContentPlanner(TwinTokenizer(), seed=0, tool_turns=(20, 30))
    turns = [_run_agent_loop(f"task {i}", tools, long_agents)[0] for i in range(6)]
    assert all(20 <= t <= 30 for t in turns), turns
    exact = ContentPlanner(TwinTokenizer(), seed=0, tool_turns=(0, 0))
    assert _run_agent_loop("task 0", tools, exact)[0] == 0
    with pytest.raises(ValueError):
        ContentPlanner(TwinTokenizer(), tool_turns=(5, 2))


def test_final_answer_after_the_budget_is_plain_text() -> None:
    _, final = _run_agent_loop("write a report", [_tool("lookup", NESTED_SCHEMA)])
    assert final.finish_reason == "stop"
    assert final.tool_calls == () and final.content


def test_tool_choice_none_required_and_named() -> None:
    tools = [_tool("a", {"type": "object", "properties": {}}), _tool("b", NESTED_SCHEMA)]
    user = [{"role": "user", "content": "go"}]
    assert _plan(user, tools, "none").finish_reason == "stop"
    named = _plan(user, tools, {"type": "function", "function": {"name": "b"}})
    assert named.finish_reason == "tool_calls" and named.tool_calls[0].name == "b"
    # past any budget, "required" still calls a tool
    long_history = list(user)
    for i in range(10):
        long_history += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": str(i), "type": "function", "function": {"name": "a", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": str(i), "content": "r"},
        ]
    assert _plan(long_history, tools, "auto").finish_reason == "stop"
    assert _plan(long_history, tools, "required").finish_reason == "tool_calls"


def test_streamed_tool_call_deltas_rebuild_the_arguments() -> None:
    plan = _plan([{"role": "user", "content": "x"}], [_tool("b", NESTED_SCHEMA)], "required")
    deltas = [p.tool_call for p in plan.pieces if p.tool_call is not None]
    assert deltas[0].id == plan.tool_calls[0].id and deltas[0].name == "b"
    assert "".join(d.arguments for d in deltas) == plan.tool_calls[0].arguments
    assert "".join(p.text for p in plan.pieces) == (plan.content or "")


@pytest.mark.parametrize("max_tokens", [1, 3, 10])
def test_tool_call_cut_by_max_tokens_is_a_length_finish(max_tokens: int) -> None:
    plan = _plan(
        [{"role": "user", "content": "x"}],
        [_tool("b", NESTED_SCHEMA)],
        "required",
        GenerationLimits(max_tokens),
    )
    assert plan.finish_reason == "length"
    assert len(plan.token_ids) == max_tokens
    assert plan.tool_calls == ()


def test_a_merged_chunk_carries_one_delta_per_tool_call() -> None:
    """When a slow client gets several tokens in one chunk, the tool call still arrives as
    one delta with its id, name and the concatenated arguments."""
    plan = _plan([{"role": "user", "content": "y"}], [_tool("b", NESTED_SCHEMA)], "required")
    writer = ChunkWriter("chatcmpl-1", "m", chat=True)
    chunk = writer.chat_delta(plan.pieces, plan.finish_reason)
    assert chunk is not None and chunk.startswith("data: ")
    choice = json.loads(chunk[len("data: ") :])["choices"][0]
    (call,) = choice["delta"]["tool_calls"]
    assert call["id"] == plan.tool_calls[0].id and call["function"]["name"] == "b"
    assert call["function"]["arguments"] == plan.tool_calls[0].arguments
    assert choice["finish_reason"] == "tool_calls"
