"""Every bad input gets OpenAI-style error JSON with vLLM's status code, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from thunder_middleware.launch import RunningServer

USER = [{"role": "user", "content": "hello"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

CHAT_CASES: list[tuple[str, Any, int, str | None]] = [
    ("no messages", {"messages": []}, 400, "messages"),
    ("messages missing", {"model": "qwen3-8b"}, 400, "messages"),
    ("messages not a list", {"messages": "hi"}, 400, "messages"),
    ("content wrong type", {"messages": [{"role": "user", "content": 5}]}, 400, "messages"),
    ("unknown role", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages"),
    ("unknown model", {"model": "gpt-9", "messages": USER}, 404, "model"),
    ("max_tokens zero", {"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens negative", {"messages": USER, "max_completion_tokens": -3}, 400, "max_tokens"),
    ("max_tokens not a number", {"messages": USER, "max_tokens": "many"}, 400, "max_tokens"),
    ("max_tokens over model length", {"messages": USER, "max_tokens": 10**7}, 400, "max_tokens"),
    (
        "min_tokens over max_tokens",
        {"messages": USER, "max_tokens": 5, "min_tokens": 9},
        400,
        "min_tokens",
    ),
    ("negative min_tokens", {"messages": USER, "min_tokens": -1}, 400, "min_tokens"),
    ("n above one", {"messages": USER, "n": 3}, 400, "n"),
    ("stream not a bool", {"messages": USER, "stream": "maybe"}, 400, "stream"),
    (
        "required tool_choice without tools",
        {"messages": USER, "tool_choice": "required"},
        400,
        "tool_choice",
    ),
    (
        "named tool not passed",
        {
            "messages": USER,
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        400,
        "tool_choice",
    ),
    ("tools malformed", {"messages": USER, "tools": [{"type": "function"}]}, 400, "tools"),
    ("body is a list", [1, 2], 400, None),
]

COMPLETION_CASES: list[tuple[str, Any, int, str | None]] = [
    ("prompt missing", {"max_tokens": 3}, 400, "prompt"),
    ("empty prompt list", {"prompt": []}, 400, "prompt"),
    ("empty token list", {"prompt": [[]]}, 400, "prompt"),
    ("token id out of vocabulary", {"prompt": [1, 2, 10**9]}, 400, "prompt"),
    ("prompt wrong type", {"prompt": {"text": "x"}}, 400, "prompt"),
    ("unknown model", {"model": "nope", "prompt": "x"}, 404, "model"),
    ("max_tokens zero", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
]


def _assert_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["code"] == status
    if param is not None:
        assert error["param"] == param, error
    assert "Traceback" not in error["message"]
    return dict(error)


ROUTE_CASES = [("/v1/chat/completions", *case) for case in CHAT_CASES] + [
    ("/v1/completions", *case) for case in COMPLETION_CASES
]


@pytest.mark.parametrize(
    ("route", "case", "body", "status", "param"),
    ROUTE_CASES,
    ids=[f"{route.rsplit('/', 1)[-1]}-{case}" for route, case, *_ in ROUTE_CASES],
)
def test_request_errors(
    twin_server: RunningServer, route: str, case: str, body: Any, status: int, param: str | None
) -> None:
    response = httpx.post(twin_server.url + route, json=body, timeout=30)
    _assert_error(response, status, param)


def test_unknown_model_message_is_vllms(twin_server: RunningServer) -> None:
    response = httpx.post(
        twin_server.url + "/v1/chat/completions", json={"model": "x", "messages": USER}
    )
    error = _assert_error(response, 404, "model")
    assert error["message"] == "The model `x` does not exist."
    assert error["type"] == "NotFoundError"


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe"])
def test_invalid_json_is_a_400(twin_server: RunningServer, raw: bytes) -> None:
    response = httpx.post(
        twin_server.url + "/v1/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    _assert_error(response, 400, None)


def test_prompt_longer_than_the_model_is_a_400(twin_server: RunningServer) -> None:
    max_len = httpx.get(twin_server.url + "/v1/models").json()["data"][0]["max_model_len"]
    words = " word" * (max_len + 10)  # one token per word
    response = httpx.post(
        twin_server.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": words}]},
        timeout=60,
    )
    error = _assert_error(response, 400, "input_tokens")
    assert f"maximum context length is {max_len} tokens" in error["message"]


def test_unknown_route_and_method(twin_server: RunningServer) -> None:
    _assert_error(httpx.get(twin_server.url + "/v1/nothing-here"), 404, None)
    _assert_error(httpx.get(twin_server.url + "/v1/chat/completions"), 405, None)


def test_the_openai_sdk_raises_its_typed_errors(twin_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=twin_server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="missing", messages=USER)  # type: ignore[arg-type]
    assert "does not exist" in str(not_found.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="qwen3-8b", messages=[])


def test_the_server_still_serves_after_bad_input(twin_server: RunningServer) -> None:
    bad_bodies: list[Any] = [[], {"messages": 7}, {"prompt": None}]
    for body in bad_bodies:
        httpx.post(twin_server.url + "/v1/chat/completions", json=body)
    ok = httpx.post(
        twin_server.url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 2}
    )
    assert ok.status_code == 200
