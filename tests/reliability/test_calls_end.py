"""Every call ends: whatever fails on its way out, the program's in-flight count goes back.

Program ids follow one rule wherever they come from (body, header, path or query), and the
id echoed in the ``X-Program-Id`` answer header is encoded so that no id can break the
answer. A call whose answer cannot be delivered (a client that stops reading) is ended by
the watchdog once it is older than the request timeout.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import httpx
import orjson
import pytest

from tests.sidecar.conftest import STRICT_POLICY, chat_body, metric, sidecar, wait_until
from thunder_middleware.launch import RunningServer

CHAT = "/v1/chat/completions"
REQUEST_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def target(fast_twin: RunningServer) -> Iterator[RunningServer]:
    with sidecar([fast_twin.url], *STRICT_POLICY, "--request-timeout",
                 str(REQUEST_TIMEOUT)) as server:
        yield server


def _by_id(url: str, program_id: str) -> dict[str, Any]:
    """A program through the query form, which takes any valid id (slashes included)."""
    response = httpx.get(url + "/programs", params={"program_id": program_id}, timeout=10)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _nothing_in_flight(url: str) -> None:
    programs = httpx.get(url + "/programs", timeout=10).json()["data"]
    busy = [p["program_id"] for p in programs
            if p["inflight_requests"] or p["waiting_requests"]]
    assert not busy, busy


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_non_latin1_id_answers_200_and_ends(target: RunningServer, stream: bool) -> None:
    program_id = f"stk-中-{'s' if stream else 'p'}"
    with httpx.Client(timeout=30) as client:
        response = client.post(target.url + CHAT, json=chat_body(program_id, 20, stream=stream))
        assert response.status_code == 200, response.text
        if stream:
            assert response.text.rstrip().endswith("data: [DONE]")
        # the header carries the id percent-encoded (UTF-8): a header cannot hold it raw
        assert unquote(response.headers["x-program-id"]) == program_id
    described = _by_id(target.url, program_id)
    assert described["program_id"] == program_id
    assert described["inflight_requests"] == 0 and described["summary"]["steps"] == 1
    _nothing_in_flight(target.url)


def test_utf8_header_id_is_the_same_program_as_the_body_id(target: RunningServer) -> None:
    """A header holds bytes; UTF-8 ones name the same program as the same id in a body."""
    program_id = "hdr-ünï-中"
    first = httpx.post(target.url + CHAT, json=chat_body(program_id, 10), timeout=30)
    assert first.status_code == 200, first.text
    raw = [(b"x-program-id", program_id.encode())]
    second = httpx.post(target.url + CHAT, json=chat_body(None, 10), timeout=30,
                        headers=raw)
    assert second.status_code == 200, second.text
    assert unquote(second.headers["x-program-id"]) == program_id
    assert _by_id(target.url, program_id)["summary"]["steps"] == 2
    _nothing_in_flight(target.url)


@pytest.mark.parametrize("blank", ["", " ", "\t ", "\u3000"])
def test_blank_ids_are_refused_the_same_everywhere(target: RunningServer, blank: str) -> None:
    with httpx.Client(base_url=target.url, timeout=30) as client:
        answers = [
            client.post(CHAT, json=chat_body(blank, 5)),
            client.post("/programs", json={"program_id": blank}),
            client.post("/programs/release", json={"program_id": blank}),
            client.get("/programs", params={"program_id": blank}),
        ]
        if blank.strip():
            answers.append(client.get("/programs/" + quote(blank)))
    for answer in answers:
        assert answer.status_code == 400, (answer.request.url, answer.text)
        assert answer.json()["error"]["param"] in {"program_id", "X-Program-Id"}
    assert not any(p["program_id"].strip() == "" for p in
                   httpx.get(target.url + "/programs", timeout=10).json()["data"])


def test_slash_ids_are_readable_back(target: RunningServer) -> None:
    program_id = "task/42"
    response = httpx.post(target.url + CHAT, json=chat_body(program_id, 10), timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["x-program-id"] == quote(program_id, safe="/")
    described = _by_id(target.url, program_id)
    assert described["program_id"] == program_id and described["summary"]["steps"] == 1
    assert "timeline" in described
    missing = httpx.get(target.url + "/programs", params={"program_id": "task/43"}, timeout=10)
    assert missing.status_code == 404
    released = httpx.post(target.url + "/programs/release", json={"program_id": program_id},
                          timeout=30)
    assert released.status_code == 200, released.text


def test_stalled_reader_is_ended_by_the_watchdog(target: RunningServer) -> None:
    """A streaming client that never reads its answer blocks the sidecar's writes: the call
    can neither finish nor fail by itself, so the watchdog ends its in-flight record once it
    is older than the request timeout, and counts it."""
    before = _watchdog_count(target.url)
    body = orjson.dumps(chat_body("stalled-reader", 20, max_tokens=30_000, stream=True))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", target.port))
    try:
        sock.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_until(lambda: _by_id(target.url, "stalled-reader")["inflight_requests"] == 1,
                   timeout=20, what="the call to start")
        started = time.monotonic()
        wait_until(lambda: _by_id(target.url, "stalled-reader")["inflight_requests"] == 0,
                   timeout=REQUEST_TIMEOUT + 20, what="the watchdog to end the call")
        assert time.monotonic() - started >= REQUEST_TIMEOUT * 0.5
        assert _watchdog_count(target.url) == before + 1
    finally:
        sock.close()
    # the sidecar still serves the same program and others
    again = httpx.post(target.url + CHAT, json=chat_body("stalled-reader", 5), timeout=30)
    assert again.status_code == 200, again.text
    _nothing_in_flight(target.url)


def _watchdog_count(url: str) -> float:
    try:
        return metric(url, "thunder_sidecar_calls_ended_by_watchdog_total")
    except KeyError:
        return 0.0


def test_health_and_metrics_after(target: RunningServer) -> None:
    assert httpx.get(target.url + "/health", timeout=10).json()["waiting_requests"] == 0
    _nothing_in_flight(target.url)
    log = target.log_tail(500_000)
    assert "Traceback" not in log, log[-3000:]
