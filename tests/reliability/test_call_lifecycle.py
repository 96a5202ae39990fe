"""How a call ends when its program ends under it, and what its client is told.

A release cuts the program's in-flight calls short: the backend stops generating, the
client gets a clear error (an SSE error event, or a 409 before the answer started), and a
call that would end after the id was reused never counts on the new program. Odd
``stream_options`` never lose a call's token counts. Runs against a slow twin, so that a
call is still generating when the release comes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.sidecar.conftest import STRICT_POLICY, chat_body, sidecar, twin, wait_until
from thunder_middleware.launch import RunningServer

CHAT = "/v1/chat/completions"
LONG = 6000  # tokens: tens of seconds on the slow twin


@pytest.fixture(scope="module")
def slow_twin() -> Iterator[RunningServer]:
    with twin(time_scale=2.0) as server:
        yield server


@pytest.fixture(scope="module")
def target(slow_twin: RunningServer) -> Iterator[RunningServer]:
    with sidecar([slow_twin.url], *STRICT_POLICY) as server:
        yield server


def _program(url: str, program_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/programs/{program_id}", timeout=10)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _twin_running(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError("vllm:num_requests_running")


def _in_background(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["response"] = call()
        except Exception as exc:  # surfaced by the test's own assertions
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _release(url: str, program_id: str) -> None:
    released = httpx.post(url + "/programs/release", json={"program_id": program_id},
                          timeout=30)
    assert released.status_code == 200, released.text


def _started(url: str, program_id: str) -> None:
    def running() -> bool:
        response = httpx.get(f"{url}/programs/{program_id}", timeout=10)
        return response.status_code == 200 and response.json()["inflight_requests"] == 1

    wait_until(running, timeout=20, what=f"{program_id}'s call to start")
    time.sleep(0.5)  # well into its generation


def test_release_cuts_a_stream_short_with_a_clear_error(target: RunningServer,
                                                        slow_twin: RunningServer) -> None:
    def stream() -> list[bytes]:
        events: list[bytes] = []
        with httpx.stream("POST", target.url + CHAT, timeout=120,
                          json=chat_body("cut-stream", 20, max_tokens=LONG,
                                         stream=True)) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:].encode())
        return events

    thread, result = _in_background(stream)
    _started(target.url, "cut-stream")
    started = time.monotonic()
    _release(target.url, "cut-stream")
    thread.join(30)
    assert not thread.is_alive() and "error" not in result, result
    events = result["response"]
    assert events[-1] == b"[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == "call_aborted" and "released" in error["message"], error
    assert time.monotonic() - started < 10
    assert len(events) < LONG  # the stream did not run its course
    # the backend stopped generating it
    wait_until(lambda: _twin_running(slow_twin.url) == 0, timeout=10,
               what="the twin to drop the aborted request")


def test_release_answers_a_waiting_plain_call_with_409(target: RunningServer,
                                                       slow_twin: RunningServer) -> None:
    thread, result = _in_background(lambda: httpx.post(
        target.url + CHAT, json=chat_body("cut-plain", 20, max_tokens=LONG), timeout=120))
    _started(target.url, "cut-plain")
    _release(target.url, "cut-plain")
    thread.join(30)
    assert not thread.is_alive() and "error" not in result, result
    response: httpx.Response = result["response"]
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "call_aborted"
    assert "released" in response.json()["error"]["message"]
    wait_until(lambda: _twin_running(slow_twin.url) == 0, timeout=10,
               what="the twin to drop the aborted request")


def test_a_late_call_never_counts_on_a_reused_id(target: RunningServer) -> None:
    thread, _ = _in_background(lambda: httpx.post(
        target.url + CHAT, json=chat_body("reused", 20, max_tokens=LONG), timeout=120))
    _started(target.url, "reused")
    _release(target.url, "reused")
    fresh = httpx.post(target.url + CHAT, json=chat_body("reused", 10, max_tokens=4),
                       timeout=60)
    assert fresh.status_code == 200, fresh.text
    thread.join(60)
    time.sleep(0.5)
    described = _program(target.url, "reused")
    assert described["status"] != "terminated"
    assert described["inflight_requests"] == 0
    # the id keeps its history (the call the release cut short), and only the fresh call's
    # tokens count: the late call's end was not booked on the program that reused the id
    outcomes = [step["outcome"] for step in described["timeline"]]
    assert outcomes == ["aborted", "ok"], described["timeline"]
    assert described["summary"]["completion_tokens"] == 4, described["summary"]


@pytest.mark.parametrize("include_usage", ["no", 1, None, "yes"])
def test_odd_stream_options_keep_the_usage(target: RunningServer,
                                           include_usage: object) -> None:
    program_id = f"odd-usage-{include_usage}"
    body = chat_body(program_id, 10, max_tokens=3, stream=True,
                     stream_options={"include_usage": include_usage})
    response = httpx.post(target.url + CHAT, json=body, timeout=60)
    assert response.status_code == 200, response.text
    chunks = [orjson.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: {")]
    # only a literal true asks for the usage chunk; the policy gets the counts anyway
    assert not any(chunk.get("usage") for chunk in chunks), chunks[-1]
    summary = _program(target.url, program_id)["summary"]
    assert summary["steps"] == 1
    assert summary["prompt_tokens"] and summary["completion_tokens"] == 3, summary


def test_nothing_in_flight_afterwards(target: RunningServer) -> None:
    programs = httpx.get(target.url + "/programs", timeout=10).json()["data"]
    assert not [p for p in programs if p["inflight_requests"] or p["waiting_requests"]]
    assert "Traceback" not in target.log_tail(500_000)
