"""Slow clients cannot hold a connection open: headers have a deadline, and so has a whole
body, however it trickles. Raw sockets, since HTTP clients will not send that slowly.

The deadlines are set through THUNDER_* variables (the same settings as the flags).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.sidecar.conftest import STRICT_POLICY, chat_body
from thunder_middleware.launch import RunningServer, start_sidecar

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
BODY_DEADLINE = 4.0
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def target(fast_twin: RunningServer) -> Iterator[RunningServer]:
    server = start_sidecar([fast_twin.url], extra_args=STRICT_POLICY, env={
        "THUNDER_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "THUNDER_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "THUNDER_BODY_DEADLINE": str(BODY_DEADLINE)})
    try:
        yield server
    finally:
        server.stop()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _until_closed(sock: socket.socket, trickle: bytes = b"", every_s: float = 0.0,
                  limit_s: float = 30.0) -> tuple[bytes, float]:
    """Send ``trickle`` a byte at a time every ``every_s`` while reading; return what the
    server answered and when it closed (seconds from the call)."""
    started = time.monotonic()
    answer = b""
    sock.settimeout(every_s or 1.0)
    position = 0
    while time.monotonic() - started < limit_s:
        if position < len(trickle):
            try:
                sock.sendall(trickle[position:position + 1])
            except OSError:
                break
            position += 1
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    return answer, time.monotonic() - started


def test_half_sent_headers_are_cut_with_408(target: RunningServer) -> None:
    with _connect(target.port) as sock:
        sock.sendall(HEAD + b"X-Slow: ")
        answer, waited = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"header_timeout" in answer
    assert waited < HEADER_TIMEOUT + 5


def test_headers_trickled_byte_by_byte_are_cut(target: RunningServer) -> None:
    """Each byte comes well within any per-read timeout; the headers as a whole do not."""
    with _connect(target.port) as sock:
        answer, waited = _until_closed(sock, HEAD + b"X-Slow: " + b"a" * 200, every_s=0.5)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert waited < HEADER_TIMEOUT + 5


def test_silent_connection_is_closed(target: RunningServer) -> None:
    with _connect(target.port) as sock:
        answer, waited = _until_closed(sock)
    assert waited < HEADER_TIMEOUT + 5 and (answer == b"" or answer.startswith(b"HTTP/1.1 408"))


def test_body_trickled_within_the_chunk_timeout_is_cut_at_the_deadline(
        target: RunningServer) -> None:
    body = orjson.dumps(chat_body("trickler", 50))
    head = HEAD + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    with _connect(target.port) as sock:
        sock.sendall(head)
        answer, waited = _until_closed(sock, body, every_s=BODY_TIMEOUT / 4)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_deadline" in answer
    assert BODY_DEADLINE * 0.8 <= waited < BODY_DEADLINE + 5


def test_a_normal_keep_alive_client_is_unaffected(target: RunningServer) -> None:
    """Headers arrive at once; the connection then idles between requests longer than the
    header deadline and is reused."""
    with httpx.Client(base_url=target.url, timeout=30) as client:
        assert client.post("/v1/chat/completions", json=chat_body("keeper", 5)
                           ).status_code == 200
        time.sleep(HEADER_TIMEOUT + 1)
        assert client.post("/v1/chat/completions", json=chat_body("keeper", 5)
                           ).status_code == 200
    assert "Traceback" not in target.log_tail(200_000)
