"""The twin's OpenAI surface through real HTTP: the openai SDK, httpx and SSE."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from thunder_middleware.launch import RunningServer
from thunder_middleware.twin.tokenizer import TwinTokenizer

MODEL = "qwen3-8b"
BLOCK = 16
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "units": {"enum": ["metric", "imperial"]},
            },
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture(scope="module")
def client(twin_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=twin_server.url + "/v1", api_key="unused", max_retries=0)


def _system() -> dict[str, str]:
    """A system prompt nobody else sent: the first turn cannot hit the cache."""
    return {"role": "system", "content": f"Session {uuid.uuid4()}. " + "Be precise. " * 120}


def _sse(url: str, body: dict[str, Any]) -> list[str]:
    """The ``data:`` payloads of one streamed response, in order."""
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [
            line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")
        ]


def test_chat_completion_shape_and_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say something."}], max_tokens=40
    )
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion" and reply.model == MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None and 1 <= usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens is not None


def test_second_turn_hits_the_prefix_cache(client: openai.OpenAI) -> None:
    messages: list[Any] = [_system(), {"role": "user", "content": "Start the task."}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=200)
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Continue."},
    ]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20)
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    # every full block of turn 1's prompt + reply (the last token has no KV) is reused
    reused = (first.usage.prompt_tokens + first.usage.completion_tokens - 1) // BLOCK * BLOCK
    assert reused <= cached < second.usage.prompt_tokens
    assert cached % BLOCK == 0


def test_streaming_matches_the_non_streamed_reply(twin_server: RunningServer) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"stream {uuid.uuid4()}"}],
        "max_tokens": 60,
        "seed": 3,
    }
    plain = httpx.post(twin_server.url + "/v1/chat/completions", json=body, timeout=60).json()
    events = _sse(twin_server.url + "/v1/chat/completions", {**body, "stream": True})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["choices"] for c in chunks)
    assert "usage" not in chunks[-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert len({c["id"] for c in chunks}) == 1


def test_streaming_include_usage_ends_with_a_usage_only_chunk(twin_server: RunningServer) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"usage {uuid.uuid4()}"}],
        "max_tokens": 25,
        "min_tokens": 25,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = _sse(twin_server.url + "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert final["choices"] == []
    usage = final["usage"]
    assert usage["completion_tokens"] == 25
    assert usage["total_tokens"] == usage["prompt_tokens"] + 25
    assert "cached_tokens" in usage["prompt_tokens_details"]
    token_chunks = [json.loads(e) for e in events[1:-2]]
    # one chunk per step; a client that falls behind gets the backlog merged into one
    assert 1 <= len(token_chunks) <= 25
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in token_chunks)
    assert len(TwinTokenizer().encode(text)) == 25


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_ignore_eos_gives_exactly_max_tokens(client: openai.OpenAI, endpoint: str) -> None:
    """The benchmark harness's request shape: max_tokens = min_tokens = n, ignore_eos."""
    extra = {"min_tokens": 123, "ignore_eos": True}
    if endpoint == "chat":
        reply: Any = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x" * 500}],
            max_tokens=123,
            extra_body=extra,
        )
    else:
        reply = client.completions.create(
            model=MODEL, prompt="y" * 500, max_tokens=123, extra_body=extra
        )
    assert reply.usage.completion_tokens == 123
    assert reply.choices[0].finish_reason == "length"


def test_completions_accept_every_prompt_form(twin_server: RunningServer) -> None:
    url = twin_server.url + "/v1/completions"

    def complete(prompt: Any) -> dict[str, Any]:
        response = httpx.post(url, json={"model": MODEL, "prompt": prompt, "max_tokens": 8})
        assert response.status_code == 200, response.text
        return dict(response.json())

    single = complete("Once upon a time")
    assert single["object"] == "text_completion" and single["choices"][0]["text"]
    batch = complete(["first prompt", "second prompt", "third"])
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2]
    ids = complete([11, 22, 33, 44, 55])
    assert ids["usage"]["prompt_tokens"] == 5
    id_batch = complete([[1, 2, 3], [4, 5, 6, 7]])
    assert id_batch["usage"]["prompt_tokens"] == 7 and len(id_batch["choices"]) == 2
    default = httpx.post(url, json={"prompt": "no max_tokens"}).json()
    assert default["usage"]["completion_tokens"] <= 16  # OpenAI's and vLLM's default


def test_streamed_completions_with_several_prompts(twin_server: RunningServer) -> None:
    body = {
        "prompt": ["a b c", "d e f"],
        "max_tokens": 5,
        "min_tokens": 5,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = _sse(twin_server.url + "/v1/completions", body)
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 10
    chunks = [json.loads(e) for e in events[:-2]]
    by_index: dict[int, int] = {}
    for chunk in chunks:
        choice = chunk["choices"][0]
        by_index[choice["index"]] = by_index.get(choice["index"], 0) + 1
    assert by_index == {0: 5, 1: 5}


def test_tool_calls_until_a_final_answer(client: openai.OpenAI) -> None:
    messages: list[Any] = [_system(), {"role": "user", "content": "Weather for my trip?"}]
    for _ in range(10):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            tools=[WEATHER],
            max_tokens=1000,  # type: ignore[list-item]
        )
        choice = reply.choices[0]
        if choice.finish_reason != "tool_calls":
            break
        calls = choice.message.tool_calls or []
        assert len(calls) == 1 and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
        arguments = json.loads(calls[0].function.arguments)  # type: ignore[union-attr]
        jsonschema.validate(arguments, WEATHER["function"]["parameters"])  # type: ignore[index]
        messages.append(choice.message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "Sunny, 21C."})
    else:
        pytest.fail("the twin kept calling tools")
    assert choice.finish_reason == "stop" and choice.message.content
    assert not choice.message.tool_calls
    assert sum(1 for m in messages if m.get("role") == "tool") >= 2
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    assert (reply.usage.prompt_tokens_details.cached_tokens or 0) > 0


def test_streamed_tool_call_deltas_assemble_to_valid_arguments(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"go {uuid.uuid4()}"}],
        tools=[WEATHER],
        tool_choice="required",
        stream=True,  # type: ignore[list-item]
    )
    name, arguments, finish = None, "", None
    for chunk in stream:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            name = name or (call.function.name if call.function else None)
            arguments += (call.function.arguments or "") if call.function else ""
        finish = choice.finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls"
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])  # type: ignore[index]


def test_unknown_body_fields_are_ignored(twin_server: RunningServer) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi", "extra": 1}],
        "program_id": "prog-1",
        "metadata": {"program_id": "p"},
        "max_tokens": 3,
        "temperature": 0.2,
        "top_k": 5,
        "chat_template_kwargs": {"x": 1},
    }
    response = httpx.post(twin_server.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text


def test_models_health_version_tokenize(twin_server: RunningServer) -> None:
    models = httpx.get(twin_server.url + "/v1/models").json()
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == MODEL and card["object"] == "model" and card["max_model_len"] > 0
    assert httpx.get(twin_server.url + "/health").status_code == 200
    assert "version" in httpx.get(twin_server.url + "/version").json()
    messages = [{"role": "user", "content": "count me"}]
    counted = httpx.post(twin_server.url + "/tokenize", json={"messages": messages}).json()
    reply = httpx.post(
        twin_server.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 1}
    ).json()
    assert counted["count"] == reply["usage"]["prompt_tokens"]
