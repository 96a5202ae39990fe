"""The shipped LiteLLM proxy config (integrations/litellm/) in front of the real stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.integrations.conftest import MODEL, Stack, running_stack
from thunder_middleware.launch import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "integrations" / "litellm" / "config.yaml"
MASTER_KEY = "sk-thunder-test-0123456789abcdef"
TOOLS = [{"type": "function", "function": {
    "name": "open_file", "description": "Open a file",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"]}}}]


def wait_for_proxy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url + "/health/liveliness", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "litellm proxy did not start:\n" + \
            log.read_text()[-3000:]
        time.sleep(0.5)


@pytest.fixture(scope="module")
def proxy_and_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Stack]]:
    """The proxy is slow to import, so it starts first and the stack starts meanwhile on the
    sidecar port the proxy was told about."""
    sidecar_port, port = free_port(), free_port()
    sidecar = f"http://127.0.0.1:{sidecar_port}"
    log = tmp_path_factory.mktemp("litellm") / "proxy.log"
    env = {**os.environ, "THUNDER_SIDECAR_URL": sidecar,
           "THUNDER_SIDECAR_OPENAI_BASE": sidecar + "/v1", "THUNDER_SIDECAR_API_KEY": "EMPTY",
           "LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    command = [str(Path(sys.executable).parent / "litellm"), "--config", str(CONFIG),
               "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        with running_stack(sidecar_port) as stack:
            wait_for_proxy(process, url, log)
            yield url, stack
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def stack(proxy_and_stack: tuple[str, Stack]) -> Stack:
    return proxy_and_stack[1]


@pytest.fixture(scope="module")
def proxy(proxy_and_stack: tuple[str, Stack]) -> str:
    return proxy_and_stack[0]


@pytest.fixture(scope="module")
def openai_client(proxy: str) -> OpenAI:
    return OpenAI(base_url=proxy + "/v1", api_key=MASTER_KEY, max_retries=0)


def namespaced_ids(stack: Stack, program_id: str) -> list[str]:
    return [p for p in stack.program_ids() if p.endswith(":" + program_id)]


def scoped(stack: Stack, program_id: str) -> str:
    found = namespaced_ids(stack, program_id)
    assert len(found) == 1, f"expected one namespaced program for {program_id}: {found}"
    assert program_id not in stack.program_ids()  # the un-namespaced id never reached it
    return found[0]


def chat(client: OpenAI, content: str, **options: Any) -> Any:
    return client.chat.completions.create(model=MODEL, max_tokens=1024,
                                          messages=[{"role": "user", "content": content}],
                                          **options)


@pytest.mark.parametrize("where", ["metadata", "body", "header", "session", "session-metadata",
                                   "session-header"])
def test_program_identity_from_each_source(stack: Stack, openai_client: OpenAI, where: str,
                                           program_id: str) -> None:
    options: dict[str, Any] = {
        "metadata": {"extra_body": {"metadata": {"program_id": program_id}}},
        "body": {"extra_body": {"program_id": program_id}},
        "header": {"extra_headers": {"X-Program-Id": program_id}},
        "session": {"extra_body": {"litellm_session_id": program_id}},
        "session-metadata": {"extra_body": {"metadata": {"session_id": program_id}}},
        "session-header": {"extra_headers": {"x-litellm-session-id": program_id}},
    }[where]
    chat(openai_client, f"hello {where}", **options)
    key = scoped(stack, program_id)
    assert key.startswith("key-")  # the master key's tenant: a hash, never the key itself
    assert MASTER_KEY not in key
    assert stack.steps(key) == 1


def test_multi_step_loop_through_the_proxy(stack: Stack, openai_client: OpenAI,
                                           program_id: str) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"Open the files {program_id}"}]
    calls = 0
    while True:
        response = openai_client.chat.completions.create(
            model=MODEL, max_tokens=1024, messages=messages, tools=TOOLS,  # type: ignore[arg-type]
            extra_body={"metadata": {"program_id": program_id}})
        calls += 1
        message = response.choices[0].message
        if not message.tool_calls:
            break
        messages.append(message.model_dump(exclude_none=True))
        messages += [{"role": "tool", "tool_call_id": c.id, "content": "..."}
                     for c in message.tool_calls]
    assert calls >= 3
    assert stack.steps(scoped(stack, program_id)) == calls


def test_streaming_through_the_proxy(stack: Stack, openai_client: OpenAI,
                                     program_id: str) -> None:
    chunks = list(chat(openai_client, "stream please", stream=True,
                       extra_headers={"X-Program-Id": program_id}))
    assert len(chunks) > 1
    timeline = stack.program(scoped(stack, program_id))["timeline"]
    assert [step["stream"] for step in timeline] == [True]


def test_request_without_identity_stays_anonymous(stack: Stack, openai_client: OpenAI) -> None:
    before = stack.program_ids()
    chat(openai_client, "no program here")
    assert stack.program_ids() == before


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_tool_intent_arrives_before_the_caller_sees_the_tool_call(
        stack: Stack, openai_client: OpenAI, program_id: str, stream: bool) -> None:
    chat(openai_client, "register me", extra_headers={"X-Program-Id": program_id})
    key = scoped(stack, program_id)
    stack.client.declare_environment(key, preset="local-shell")
    stack.client.remove_environment(key)  # keeps the spec; nothing live until an intent
    response = openai_client.chat.completions.create(
        model=MODEL, max_tokens=1024, tools=TOOLS, tool_choice="required",  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "open README.md"}], stream=stream,
        extra_headers={"X-Program-Id": program_id})
    if stream:
        chunks = list(response)  # type: ignore[arg-type]
        assert any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    else:
        assert response.choices[0].message.tool_calls  # type: ignore[union-attr]
    live = [e for e in stack.program(key)["environments"] if e["state"] in ("preparing", "ready")]
    assert live, "the proxy callback should have announced the tool call to the sidecar"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_end_session_releases_without_knowing_the_namespace(
        stack: Stack, openai_client: OpenAI, program_id: str, stream: bool) -> None:
    """The caller never learns its key hash: ``end_session`` on the last call of the session
    makes the proxy hook release the namespaced program once the call is answered."""
    chat(openai_client, "first turn", extra_body={"metadata": {"session_id": program_id}})
    key = scoped(stack, program_id)
    assert stack.program(key)["terminated_reason"] is None
    last = chat(openai_client, "last turn", stream=stream,
                extra_body={"metadata": {"session_id": program_id, "end_session": True}})
    if stream:
        list(last)
    seen = stack.program(key)
    assert seen["terminated_reason"] == "released"
    assert seen["summary"]["steps"] == 2


def test_releasing_the_bare_id_names_the_namespaced_one(stack: Stack, openai_client: OpenAI,
                                                        program_id: str) -> None:
    chat(openai_client, "hello", extra_headers={"X-Program-Id": program_id})
    key = scoped(stack, program_id)
    answer = httpx.post(stack.url + "/programs/release", json={"program_id": program_id})
    assert answer.status_code == 404
    message = answer.json()["error"]["message"]
    assert key in message and "end_session" in message


async def test_proxy_hook_preset_declares_each_program_environment(stack: Stack,
                                                                   program_id: str) -> None:
    """``preset=`` (THUNDER_PROXY_PRESET in the shipped callback module) on the hook the
    proxy runs: the namespaced program gets its environment at its first call."""
    from litellm.proxy._types import UserAPIKeyAuth

    from thunder_middleware.integrations.litellm_proxy import ThunderProxyHook

    hook = ThunderProxyHook(stack.url, preset="local-shell")
    data: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                            "metadata": {"session_id": program_id}}
    await hook.async_pre_call_hook(UserAPIKeyAuth(team_id="team-a"), None, data, "completion")
    assert data["extra_body"]["program_id"] == f"team-a:{program_id}"
    environments = stack.program(f"team-a:{program_id}")["environments"]
    assert environments and environments[0]["provider"] == "local"
    stack.client.release(f"team-a:{program_id}")
