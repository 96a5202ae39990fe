"""The control-API client against the real sidecar (sync and async)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.integrations.conftest import Stack
from thunder_middleware.integrations.client import (
    AsyncThunderClient,
    ThunderAPIError,
    ThunderClient,
)
from thunder_middleware.launch import free_port


def test_register_then_release(stack: Stack, program_id: str) -> None:
    registered = stack.client.register(program_id)
    assert registered["program_id"] == program_id
    assert program_id in stack.program_ids()
    released = stack.client.release(program_id)
    assert released is not None and released["status"] == "terminated"
    assert stack.program(program_id)["terminated_reason"] == "released"


def test_unknown_program_release_is_none_or_a_typed_error(stack: Stack, program_id: str) -> None:
    assert stack.client.release(program_id) is None
    with pytest.raises(ThunderAPIError) as caught:
        stack.client.release(program_id, missing_ok=False)
    assert caught.value.status_code == 404
    assert caught.value.type == "not_found_error"
    assert stack.client.program(program_id) is None


def test_bad_input_surfaces_the_sidecar_error(stack: Stack) -> None:
    with pytest.raises(ThunderAPIError) as caught:
        stack.client.register("x" * 5000)
    assert caught.value.status_code == 400
    assert caught.value.param == "program_id"


def test_transport_errors_are_retried_then_raised() -> None:
    client = ThunderClient(f"http://127.0.0.1:{free_port()}", attempts=3)
    started = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        client.release("p")
    assert time.monotonic() - started >= 0.2  # two exponential back-offs: 0.1 s + 0.2 s


class _AlwaysBadGateway(BaseHTTPRequestHandler):
    """A loopback server that answers every POST with 502 and counts them."""

    calls = 0

    def do_POST(self) -> None:
        type(self).calls += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"error": {"message": "upstream gone", "type": "upstream_error"}}'
        self.send_response(502)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_exec_is_not_sent_twice_but_release_is_retried() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysBadGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ThunderClient(f"http://127.0.0.1:{server.server_address[1]}", attempts=3)
        with pytest.raises(ThunderAPIError) as caught:
            client.exec("p", "make test")  # the command may have run: never sent again
        assert caught.value.status_code == 502 and _AlwaysBadGateway.calls == 1
        with pytest.raises(ThunderAPIError):
            client.release("p")
        assert _AlwaysBadGateway.calls == 1 + 3
        client.close()
    finally:
        server.shutdown()
        server.server_close()


async def test_async_client_register_exec_release(stack: Stack, program_id: str) -> None:
    async with AsyncThunderClient(stack.url) as client:
        await client.register(program_id, preset="local-shell")
        result = await client.exec(program_id, ["sh", "-c", "echo hello; echo oops >&2; exit 3"])
        assert (result.exit_code, result.stdout, result.stderr) == (3, "hello\n", "oops\n")
        listed = await client.programs()
        assert program_id in {p["program_id"] for p in listed}
        await client.release(program_id)
    assert stack.program(program_id)["terminated_reason"] == "released"


def test_declare_environment_and_tool_intent_return_handles(stack: Stack,
                                                            program_id: str) -> None:
    handle = stack.client.declare_environment(program_id, preset="local-shell")
    assert handle is not None and handle.program_id == program_id
    again = stack.client.tool_intent(program_id, ["run_shell"])
    assert again is not None and again.env_id == handle.env_id
    assert stack.client.exec(program_id, "pwd").exit_code == 0
    stack.client.release(program_id)
    with pytest.raises(ThunderAPIError) as caught:  # its environment is gone with it
        stack.client.exec(program_id, "pwd")
    assert caught.value.status_code in (404, 409)
