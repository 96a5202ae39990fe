"""LiteLLM SDK: the callback (async path) and the wrappers (sync path), real sidecar + twin."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import litellm
import pytest

from tests.integrations.conftest import MODEL, Stack
from thunder_middleware.integrations import litellm as thunder_litellm
from thunder_middleware.integrations.litellm import ThunderLiteLLMCallback
from thunder_middleware.launch import free_port

TOOLS = [{
    "type": "function",
    "function": {
        "name": "run_tests",
        "description": "Run the test suite",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                       "required": ["path"]},
    },
}]


@pytest.fixture(autouse=True)
def callback(stack: Stack) -> Iterator[ThunderLiteLLMCallback]:
    handler = ThunderLiteLLMCallback()  # the one line: the sidecar is the calls' api_base
    previous = list(litellm.callbacks)
    litellm.callbacks = [handler]
    try:
        yield handler
    finally:
        litellm.callbacks = previous


def request(stack: Stack, program_id: str, messages: list[dict[str, Any]],
            **extra: Any) -> dict[str, Any]:
    return {"model": f"openai/{MODEL}", "api_base": stack.openai_base, "api_key": "EMPTY",
            "messages": messages, "tools": TOOLS, "max_tokens": 1024,
            "metadata": {"program_id": program_id}, **extra}


def tool_calls_of(message: Any) -> list[Any]:
    return list(getattr(message, "tool_calls", None) or [])


def append_turn(messages: list[dict[str, Any]], content: str | None, calls: list[Any]) -> None:
    messages.append({"role": "assistant", "content": content, "tool_calls": [
        {"id": c["id"], "type": "function", "function": c["function"]} for c in calls]})
    for call in calls:
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": "2 passed"})


def plain_calls(message: Any) -> list[dict[str, Any]]:
    return [{"id": c.id, "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in tool_calls_of(message)]


def streamed_calls(chunks: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    calls: dict[int, dict[str, Any]] = {}
    text = ""
    for chunk in chunks:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        text += delta.content or ""
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": None, "function": {"name": "",
                                                                            "arguments": ""}})
            call["id"] = piece.id or call["id"]
            call["function"]["name"] += piece.function.name or ""
            call["function"]["arguments"] += piece.function.arguments or ""
    for call in calls.values():
        json.loads(call["function"]["arguments"])  # the twin's arguments are valid JSON
    return text, list(calls.values())


def task(program_id: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Make the failing test pass ({program_id})."}]


def continue_with_tools(messages: list[dict[str, Any]], response: Any) -> bool:
    """Append the model's turn and its tools' results; False once it answers without tools."""
    message = response.choices[0].message
    if not tool_calls_of(message):
        return False
    append_turn(messages, message.content, plain_calls(message))
    return True


async def test_async_loop_every_call_tagged(stack: Stack, program_id: str) -> None:
    messages, calls = task(program_id), 0
    while True:
        response = await litellm.acompletion(**request(stack, program_id, messages))
        calls += 1
        if not continue_with_tools(messages, response):
            break
    assert calls >= 3
    assert stack.steps(program_id) == calls
    stack.client.release(program_id)
    assert stack.program(program_id)["terminated_reason"] == "released"


async def test_async_streaming_loop_through_wrapper(stack: Stack, program_id: str) -> None:
    messages, calls = task(program_id), 0
    while True:
        stream = await thunder_litellm.acompletion(**request(stack, program_id, messages,
                                                             stream=True))
        chunks = [chunk async for chunk in stream]
        calls += 1
        text, tool_calls = streamed_calls(chunks)
        if not tool_calls:
            break
        append_turn(messages, text or None, tool_calls)
    seen = stack.program(program_id)
    assert calls >= 3
    assert seen["summary"]["steps"] == calls
    assert all(step["stream"] for step in seen["timeline"])


async def test_async_streaming_with_the_callback_alone(stack: Stack, program_id: str) -> None:
    stream = await litellm.acompletion(**request(stack, program_id, task(program_id),
                                                 stream=True))
    _ = [chunk async for chunk in stream]
    assert stack.program(program_id)["timeline"][0]["stream"] is True


def test_sync_loop_through_wrapper(stack: Stack, program_id: str) -> None:
    messages, calls = task(program_id), 0
    while True:
        response = thunder_litellm.completion(**request(stack, program_id, messages))
        calls += 1
        if not continue_with_tools(messages, response):
            break
    assert calls >= 3
    assert stack.steps(program_id) == calls


def test_sync_streaming_through_wrapper(stack: Stack, program_id: str) -> None:
    chunks = list(thunder_litellm.completion(**request(stack, program_id, task(program_id),
                                                       stream=True)))
    assert len(chunks) > 1
    assert stack.program(program_id)["timeline"][0]["stream"] is True


def test_plain_sync_completion_warns_once_that_it_is_not_tagged(
        stack: Stack, program_id: str, callback: ThunderLiteLLMCallback,
        caplog: pytest.LogCaptureFixture) -> None:
    """Why the wrapper exists: litellm 1.110 runs no hook on the sync path that can change
    the request, so the callback says so at the first such call, once."""
    caplog.set_level(logging.WARNING)
    thunder_litellm._sync_warning.clear()  # another test in this process may have warned
    for _ in range(2):
        litellm.completion(**request(stack, program_id, task(program_id)))
    assert program_id not in stack.program_ids()
    warned = [r for r in caplog.records if "cannot be tagged" in r.getMessage()]
    assert len(warned) == 1 and program_id in warned[0].getMessage()
    assert "integrations.litellm.completion" in warned[0].getMessage()
    caplog.clear()
    thunder_litellm.completion(**request(stack, program_id, task(program_id)))
    assert stack.steps(program_id) == 1  # the wrapper tags it, and no warning for it
    assert not [r for r in caplog.records if "cannot be tagged" in r.getMessage()]


def session_request(stack: Stack, where: str, session: str) -> dict[str, Any]:
    kwargs = request(stack, session, task(session))
    del kwargs["metadata"]
    kwargs.update({
        "metadata": {"metadata": {"session_id": session}},
        "param": {"litellm_session_id": session},
        "header": {"extra_headers": {"x-litellm-session-id": session}},
    }[where])
    return kwargs


@pytest.mark.parametrize("where", ["metadata", "param", "header"])
async def test_litellm_session_conventions_name_the_program(stack: Stack, program_id: str,
                                                            where: str) -> None:
    """metadata.session_id, litellm_session_id and the x-litellm-session-id header, as the
    proxy accepts them, name the program in the SDK too."""
    await litellm.acompletion(**session_request(stack, where, program_id))
    await litellm.acompletion(**session_request(stack, where, program_id))
    assert stack.steps(program_id) == 2


def test_session_conventions_in_the_sync_wrapper(stack: Stack, program_id: str) -> None:
    thunder_litellm.completion(**session_request(stack, "metadata", program_id))
    assert stack.steps(program_id) == 1


async def test_router_session_ends_with_end_session(stack: Stack, program_id: str) -> None:
    """A Router with two deployments: every call of the session is one program, and the
    session's last call (metadata end_session) releases it once answered."""
    deployment = {"model": f"openai/{MODEL}", "api_base": stack.openai_base, "api_key": "EMPTY"}
    router = litellm.Router(model_list=[{"model_name": "agent", "litellm_params": deployment},
                                        {"model_name": "agent", "litellm_params": deployment}])
    for last in (False, False, True):
        metadata: dict[str, Any] = {"session_id": program_id}
        if last:
            metadata["end_session"] = True
        await router.acompletion(model="agent", messages=task(program_id), max_tokens=32,
                                 metadata=metadata)
        seen = stack.program(program_id)
        assert seen["terminated_reason"] == ("released" if last else None)
    assert seen["summary"]["steps"] == 3


async def test_callback_release_ends_a_session(stack: Stack, program_id: str,
                                               callback: ThunderLiteLLMCallback) -> None:
    await litellm.acompletion(**session_request(stack, "param", program_id))
    assert stack.program(program_id)["terminated_reason"] is None
    released = await callback.arelease(program_id)
    assert released is not None and released["terminated_reason"] == "released"
    assert callback.release(program_id) is None  # nothing live left: None, not an error


async def test_preset_option_gives_each_session_an_environment(stack: Stack,
                                                               program_id: str) -> None:
    litellm.callbacks = [ThunderLiteLLMCallback(preset="local-shell")]
    await litellm.acompletion(**session_request(stack, "metadata", program_id))
    environments = stack.program(program_id)["environments"]
    assert environments and environments[0]["program_id"] == program_id


async def test_existing_extra_body_survives(stack: Stack, program_id: str) -> None:
    """``ignore_eos`` makes the twin answer exactly ``max_tokens``; the same fixed prompt
    without it ends sooner (the twin is deterministic for a given prompt)."""
    fixed = [{"role": "user", "content": "Summarize the failing test output."}]
    kwargs = request(stack, program_id, fixed, max_tokens=300,
                     extra_body={"ignore_eos": True})
    kwargs.pop("tools")
    await litellm.acompletion(**kwargs)
    control = await litellm.acompletion(**{**kwargs, "extra_body": {}, "metadata": {}})
    assert stack.program(program_id)["timeline"][0]["completion_tokens"] == 300
    assert control.usage.completion_tokens < 300


async def test_fallback_deployment_is_tagged_too(stack: Stack, program_id: str) -> None:
    """The deployment hook runs per attempt: a fallback after a dead deployment carries it."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    router = litellm.Router(
        model_list=[
            {"model_name": "primary", "litellm_params": {
                "model": f"openai/{MODEL}", "api_base": dead, "api_key": "EMPTY"}},
            {"model_name": "backup", "litellm_params": {
                "model": f"openai/{MODEL}", "api_base": stack.openai_base, "api_key": "EMPTY"}},
        ],
        fallbacks=[{"primary": ["backup"]}], num_retries=0,
    )
    await router.acompletion(model="primary", messages=task(program_id), max_tokens=32,
                             metadata={"program_id": program_id})
    assert stack.steps(program_id) == 1


def live_environments(stack: Stack, program_id: str) -> list[dict[str, Any]]:
    return [e for e in stack.program(program_id)["environments"]
            if e["state"] in ("preparing", "ready")]


def without_live_environment(stack: Stack, program_id: str) -> None:
    stack.client.register(program_id, preset="local-shell")
    stack.client.remove_environment(program_id)  # keeps the spec; only an intent revives it
    assert not live_environments(stack, program_id)


@pytest.mark.parametrize("path", ["async-callback", "async-stream-wrapper", "sync-wrapper",
                                  "sync-stream-wrapper"])
async def test_tool_intent_arrives_before_the_caller_gets_the_call(stack: Stack, path: str,
                                                                   program_id: str) -> None:
    without_live_environment(stack, program_id)
    kwargs = request(stack, program_id, task(program_id), tool_choice="required")
    if path == "async-callback":
        response = await litellm.acompletion(**kwargs)
        assert tool_calls_of(response.choices[0].message)
    elif path == "async-stream-wrapper":
        stream = await thunder_litellm.acompletion(stream=True, **kwargs)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                # the finishing chunk is handed over only after the intent went out
                assert live_environments(stack, program_id)
    elif path == "sync-wrapper":
        response = thunder_litellm.completion(**kwargs)
        assert tool_calls_of(response.choices[0].message)
    else:
        for chunk in thunder_litellm.completion(stream=True, **kwargs):
            if chunk.choices and chunk.choices[0].finish_reason:
                assert live_environments(stack, program_id)
    assert live_environments(stack, program_id)


async def test_no_tool_call_no_environment(stack: Stack, program_id: str) -> None:
    """The control: a reply without tool calls announces nothing."""
    without_live_environment(stack, program_id)
    await litellm.acompletion(**request(stack, program_id, task(program_id), tool_choice="none"))
    assert not live_environments(stack, program_id)


# --- release when the workflow ends, an exception included ------------------------------
class AgentCrashed(Exception):
    """What an agent loop raises midway (a tool blew up, a parser failed...)."""


def assert_released(stack: Stack, program_id: str, steps: int) -> None:
    seen = stack.program(program_id)
    assert (seen["status"], seen["terminated_reason"]) == ("terminated", "released"), seen
    assert seen["summary"]["steps"] == steps


async def test_a_loop_that_raises_inside_releasing_is_released(stack: Stack,
                                                               program_id: str) -> None:
    """The callback cannot know when a workflow ends: the documented way is the client's
    ``releasing()``, which releases on the way out of an exception too."""
    messages, calls = task(program_id), 0
    with pytest.raises(AgentCrashed), stack.client.releasing(program_id):
        while True:
            response = await litellm.acompletion(**request(stack, program_id, messages))
            calls += 1
            assert stack.program(program_id)["status"] != "terminated"
            if calls == 2:
                raise AgentCrashed("the test runner crashed")
            continue_with_tools(messages, response)
    assert_released(stack, program_id, steps=2)


async def test_callback_program_block_releases_when_the_loop_raises(
        stack: Stack, callback: ThunderLiteLLMCallback, program_id: str) -> None:
    with pytest.raises(AgentCrashed):
        async with callback.program(program_id) as metadata:
            assert metadata == {"program_id": program_id}
            await litellm.acompletion(**request(stack, program_id, task(program_id),
                                                metadata=metadata))
            raise AgentCrashed("midway")
    assert_released(stack, program_id, steps=1)


async def test_callback_program_block_releases_the_namespaced_id(
        stack: Stack, program_id: str) -> None:
    """With a namespace the sidecar knows the program as ``namespace:id``, and that is the
    one released; a block that made no call releases nothing and raises nothing."""
    namespaced = ThunderLiteLLMCallback(namespace="worker-7")
    litellm.callbacks = [namespaced]  # the autouse fixture restores the list afterwards
    async with namespaced.program(program_id) as metadata:
        await litellm.acompletion(**request(stack, program_id, task(program_id),
                                            metadata=metadata))
        assert stack.program(f"worker-7:{program_id}")["status"] != "terminated"
    assert_released(stack, f"worker-7:{program_id}", steps=1)
    assert program_id not in stack.program_ids()
    async with namespaced.program("never-called"):
        pass
    assert "worker-7:never-called" not in stack.program_ids()
