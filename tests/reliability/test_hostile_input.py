"""Hostile and broken input against a live sidecar: sizes, encodings, types, slow clients.

Each case must be refused with the right status and an OpenAI-style body, and leave the
sidecar healthy with no program stuck. The slow-client cases use raw sockets, since HTTP
clients will not send a body slower than they can.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.sidecar.conftest import STRICT_POLICY, chat_body, sidecar
from thunder_middleware.launch import RunningServer

MAX_BODY = 64 * 1024
BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def strict(fast_twin: RunningServer) -> Iterator[RunningServer]:
    with sidecar([fast_twin.url], *STRICT_POLICY, "--max-body-bytes", str(MAX_BODY),
                 "--body-timeout", str(BODY_TIMEOUT), "--max-header-bytes", "8192") as server:
        yield server


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    error: dict[str, object] = response.json()["error"]
    assert error["message"] and {"type", "param", "code"} <= set(error)
    return error


JSON = {"content-type": "application/json"}
CHAT = "/v1/chat/completions"
HOSTILE_BODIES: list[tuple[str, bytes, int]] = [
    ("invalid utf-8", b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}', 400),
    ("truncated json", b'{"model": "qwen3-8b", "messages": [', 400),
    ("not an object", b"[1, 2, 3]", 400),
    ("NaN literal", b'{"model":"qwen3-8b","messages":[],"temperature":NaN}', 400),
    ("deep nesting", b"[" * 20_000 + b"]" * 20_000, 400),
    ("messages wrong type", orjson.dumps({"model": "qwen3-8b", "messages": 5}), 400),
    ("max_tokens as text", orjson.dumps(chat_body("t", 5, max_tokens="many")), 400),  # type: ignore[arg-type]
    ("program_id as number", orjson.dumps({**chat_body(None, 5), "program_id": 12}), 400),
    ("program_id too long", orjson.dumps(chat_body("p" * 5000, 5)), 400),
    ("program_id with NUL", orjson.dumps(chat_body("a\x00b", 5)), 400),
    ("empty body", b"", 400),
    ("body of nulls", b"\x00" * 1000, 400),
    ("integer beyond 64 bits", b'{"model":"qwen3-8b","max_tokens":' + b"9" * 40 + b"}", 400),
]


@pytest.mark.parametrize(("case", "raw", "status"), HOSTILE_BODIES,
                         ids=[case for case, _, _ in HOSTILE_BODIES])
def test_broken_bodies_are_refused(strict: RunningServer, case: str, raw: bytes,
                                   status: int) -> None:
    _error(httpx.post(strict.url + CHAT, content=raw, headers=JSON, timeout=30), status)


def test_body_size_limit_is_413_declared_or_chunked(strict: RunningServer) -> None:
    big = orjson.dumps(chat_body("big", 5, padding="x" * (MAX_BODY + 1)))
    error = _error(httpx.post(strict.url + CHAT, content=big, headers=JSON, timeout=30), 413)
    assert error["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must count bytes
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    _error(httpx.post(strict.url + CHAT, content=chunks(), headers=JSON, timeout=30), 413)
    _error(httpx.post(strict.url + "/programs", content=big, headers=JSON, timeout=30), 413)
    assert httpx.post(strict.url + CHAT, json=chat_body("small", 5), timeout=30
                      ).status_code == 200


def test_header_and_id_length_limits(strict: RunningServer) -> None:
    _error(httpx.post(strict.url + CHAT, json=chat_body(None, 5), timeout=30,
                      headers={"x-program-id": "h" * 9000}), 431)
    _error(httpx.post(strict.url + CHAT, json=chat_body(None, 5), timeout=30,
                      headers={"x-program-id": "h" * 1000}), 400)
    _error(httpx.get(strict.url + "/programs/" + "g" * 1000, timeout=30), 400)
    _error(httpx.post(strict.url + "/programs/release", json={"program_id": ["x"]},
                      timeout=30), 400)


def _raw_request(port: int, head: bytes, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head + body)
    return sock


def _read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or the answer is complete)."""
    answer = b""
    while True:
        chunk = sock.recv(65536)
        answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                       if line.startswith(b"content-length:")), None)
        if not chunk or (length is not None and len(body) >= length):
            return answer


def test_stalled_body_is_cut_with_408(strict: RunningServer) -> None:
    """Headers announce 100 bytes, 10 arrive, then nothing: the sidecar answers 408 after the
    body timeout instead of holding the request open forever."""
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    started = time.monotonic()
    with _raw_request(strict.port, head, b'{"model":"') as sock:
        answer = _read_answer(sock)
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout" in answer
    assert BODY_TIMEOUT * 0.8 <= waited < BODY_TIMEOUT + 20


def test_client_leaving_mid_body_is_no_server_error(strict: RunningServer) -> None:
    """A client that hangs up halfway through its body is not a sidecar fault: no 500 is
    logged, no traceback, and the sidecar serves the next call."""
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    for _ in range(5):
        _raw_request(strict.port, head, b'{"model":"').close()
    time.sleep(0.5)
    assert httpx.post(strict.url + CHAT, json=chat_body("after-hangups", 5), timeout=30
                      ).status_code == 200
    log = strict.log_tail(200_000)
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def test_trickled_body_within_the_timeout_is_served(strict: RunningServer) -> None:
    body = orjson.dumps(chat_body("trickle", 5))
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with _raw_request(strict.port, head) as sock:
        for start in range(0, len(body), len(body) // 3 + 1):
            sock.sendall(body[start:start + len(body) // 3 + 1])
            time.sleep(BODY_TIMEOUT / 4)
        answer = _read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_half_sent_headers_do_not_block_other_clients(strict: RunningServer) -> None:
    """Fifty connections that send half a header block and stall (slowloris) cost the
    asyncio server a socket each, not a worker: a normal call still goes through at once."""
    stalled = [_raw_request(strict.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                            b"X-Slow: ") for _ in range(50)]
    try:
        started = time.monotonic()
        response = httpx.post(strict.url + CHAT, json=chat_body("beside-slowloris", 5),
                              timeout=30)
        assert response.status_code == 200
        assert time.monotonic() - started < 15
    finally:
        for sock in stalled:
            sock.close()


def test_sidecar_is_healthy_and_nothing_waits_afterwards(strict: RunningServer) -> None:
    health = httpx.get(strict.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["waiting_requests"] == 0
    programs = httpx.get(strict.url + "/programs", timeout=10).json()["data"]
    assert all(p["waiting_requests"] == 0 and p["inflight_requests"] == 0 for p in programs)
