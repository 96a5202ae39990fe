"""The OpenAI and control surfaces over real HTTP: streaming, identity, errors, expiry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.sidecar.conftest import STRICT_POLICY, chat_body, metric, program, sidecar, wait_until
from thunder_middleware.launch import RunningServer, free_port


@pytest.fixture(scope="module")
def api(twin_server: RunningServer) -> Iterator[RunningServer]:
    with sidecar([twin_server.url], *STRICT_POLICY, "--idle-timeout", "1.5") as server:
        yield server


def _events(response: httpx.Response) -> list[Any]:
    payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    return [orjson.loads(payload) for payload in payloads[:-1]]


def _chat(url: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30, **kwargs)


def test_streaming_without_usage_strips_the_usage_chunk_but_counts_it(api: RunningServer) -> None:
    body = chat_body("streamy", 40, max_tokens=12, stream=True)
    with httpx.stream("POST", api.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = _events(r)
    assert chunks and all(not chunk.get("usage") for chunk in chunks)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content
    step = program(api.url, "streamy")["timeline"][-1]
    assert step["stream"] and step["outcome"] == "ok"
    assert step["prompt_tokens"] >= 40 and step["completion_tokens"] == 12


def test_streaming_with_usage_keeps_the_usage_chunk(api: RunningServer) -> None:
    body = chat_body("streamy-usage", 40, max_tokens=7, stream=True,
                     stream_options={"include_usage": True})
    with httpx.stream("POST", api.url + "/v1/chat/completions", json=body, timeout=30) as r:
        chunks = _events(r)
    usage_chunks = [chunk for chunk in chunks if chunk.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == []
    assert usage_chunks[0]["usage"]["completion_tokens"] == 7
    step = program(api.url, "streamy-usage")["timeline"][-1]
    assert step["completion_tokens"] == 7 and step["prefill_s"] is not None


def test_text_completions_stream_and_models(api: RunningServer) -> None:
    body = {"model": "qwen3-8b", "prompt": "once upon a time", "max_tokens": 5,
            "stream": True, "program_id": "legacy"}
    with httpx.stream("POST", api.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        chunks = _events(r)
    assert all(not chunk.get("usage") for chunk in chunks)
    assert program(api.url, "legacy")["summary"]["completion_tokens"] == 5
    models = httpx.get(api.url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["qwen3-8b"]


def test_identity_sources_and_precedence(api: RunningServer) -> None:
    plain = chat_body(None, 10)
    assert _chat(api.url, {**plain, "program_id": "via-body"},
                 headers={"X-Program-Id": "ignored-header"}).headers["x-program-id"] == "via-body"
    assert _chat(api.url, plain, headers={"X-Program-Id": "via-header"}).status_code == 200
    meta = _chat(api.url, {**plain, "metadata": {"program_id": "via-metadata"}})
    assert meta.headers["x-program-id"] == "via-metadata"
    listed = {p["program_id"] for p in httpx.get(api.url + "/programs").json()["data"]}
    assert {"via-body", "via-header", "via-metadata"} <= listed
    assert "ignored-header" not in listed


def test_anonymous_calls_count_while_running_and_leave_no_program(api: RunningServer) -> None:
    before = metric(api.url, "thunder_sidecar_requests_total", 'outcome="200"')
    response = _chat(api.url, chat_body(None, 10))
    assert response.status_code == 200
    anonymous_id = response.headers["x-program-id"]
    assert anonymous_id.startswith("anon-")
    assert metric(api.url, "thunder_sidecar_requests_total", 'outcome="200"') == before + 1
    listed = {p["program_id"] for p in httpx.get(api.url + "/programs").json()["data"]}
    assert not any(pid.startswith("anon-") for pid in listed)
    assert httpx.get(f"{api.url}/programs/{anonymous_id}").status_code == 404


def test_idle_programs_expire_and_registered_ones_too(api: RunningServer) -> None:
    assert _chat(api.url, chat_body("sleepy", 10)).status_code == 200
    registered = httpx.post(api.url + "/programs", json={"program_id": "early-bird"})
    assert registered.status_code == 200 and registered.json()["status"] == "registered"
    for name in ("sleepy", "early-bird"):
        wait_until(lambda n=name: program(api.url, n)["terminated_reason"] == "expired",  # type: ignore[misc]
                   timeout=10, what=f"{name} to expire")
    assert program(api.url, "sleepy")["status"] == "terminated"
    assert metric(api.url, "thunder_sidecar_expirations_total") >= 2


def _assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{broken", "invalid_json"),
        (b"", "empty_body"),
        (b"[1, 2, 3]", "invalid_type"),
        (b'{"model": "m", "messages": "hello"}', "invalid_type"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
         "invalid_type"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "program_id": 7}',
         "invalid_type"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "program_id": "'
         + b"x" * 300 + b'"}', "invalid_length"),
        (b'\xff\xfe{"messages": 1}', "invalid_json"),
    ],
)
def test_bad_requests_are_openai_400s(api: RunningServer, content: bytes, code: str) -> None:
    response = httpx.post(api.url + "/v1/chat/completions", content=content,
                          headers={"content-type": "application/json"}, timeout=10)
    _assert_openai_error(response, 400, code)


def test_control_api_errors(api: RunningServer) -> None:
    _assert_openai_error(httpx.post(api.url + "/programs/release", json={"program_id": "nope"}),
                         404, "not_found")
    _assert_openai_error(httpx.post(api.url + "/programs/release", json={"wrong": 1}), 400)
    _assert_openai_error(httpx.post(api.url + "/programs/release", content=b"{oops"), 400)
    _assert_openai_error(httpx.get(api.url + "/programs/never-seen"), 404)
    _assert_openai_error(httpx.post(api.url + "/programs", json={"program_id": "e",
                                                                 "preset": "python"}), 501)
    _assert_openai_error(httpx.post(api.url + "/programs/e/exec", json={"command": "ls"}), 501)
    long_header = _chat(api.url, chat_body(None, 5), headers={"X-Program-Id": "h" * 400})
    _assert_openai_error(long_header, 400, "invalid_length")


def test_backend_client_error_passes_through_and_leaves_no_stuck_program(
        api: RunningServer) -> None:
    bad = _chat(api.url, {**chat_body("rejected", 10), "max_tokens": -5})
    assert bad.status_code == 400, bad.text
    assert "error" in bad.json()
    state = program(api.url, "rejected")
    assert state["inflight_requests"] == 0 and state["waiting_requests"] == 0
    assert state["timeline"][-1]["outcome"] == "failed"
    assert _chat(api.url, chat_body("rejected", 10)).status_code == 200


def test_no_healthy_backend_is_503_with_retry_after() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with sidecar([dead], *STRICT_POLICY) as server:
        health = httpx.get(server.url + "/health", timeout=5).json()
        assert health["status"] == "degraded"
        assert health["backends"][0]["healthy"] is False
        response = _chat(server.url, chat_body("lonely", 5))
        _assert_openai_error(response, 503, "no_healthy_backend")
        assert int(response.headers["retry-after"]) >= 1
        _assert_openai_error(httpx.get(server.url + "/v1/models", timeout=5), 503)


def test_generic_openai_backend_uses_the_configured_capacity(twin_server: RunningServer) -> None:
    with sidecar([twin_server.url], *STRICT_POLICY, "--backend-kind", "openai",
                 "--backend-capacity", "4096") as server:
        backend = httpx.get(server.url + "/health", timeout=5).json()["backends"][0]
        assert backend["kind"] == "openai" and backend["capacity_tokens"] == 4096
        assert _chat(server.url, chat_body("generic", 10)).status_code == 200
        assert metric(server.url, "thunder_sidecar_backend_capacity_tokens") == 4096


def test_completion_calls_take_the_raw_path_and_are_timed(api: RunningServer) -> None:
    """POSTs to the two completion paths are served by fast_path (timed by its histogram,
    once per call that reached a backend); other methods on them still get FastAPI's
    405 in OpenAI's error shape, and a refused body is not timed."""
    count = "thunder_sidecar_added_latency_seconds_count"
    before = metric(api.url, count)
    assert _chat(api.url, chat_body("timed", 30)).status_code == 200
    text = httpx.post(api.url + "/v1/completions", timeout=30,
                      json={"model": "qwen3-8b", "prompt": "hi", "max_tokens": 2,
                            "program_id": "timed"})
    assert text.status_code == 200 and text.json()["usage"]["completion_tokens"] == 2
    assert metric(api.url, count) == before + 2
    refused = httpx.post(api.url + "/v1/chat/completions", content=b"{not json", timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_json"
    assert metric(api.url, count) == before + 2
    wrong_method = httpx.get(api.url + "/v1/chat/completions", timeout=30)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "api_error"
