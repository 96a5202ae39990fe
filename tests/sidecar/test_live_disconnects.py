"""Clients that leave: while waiting at the gate, mid-stream, mid-response."""

from __future__ import annotations

import httpx
import pytest

from tests.sidecar.conftest import (
    STRICT_POLICY,
    chat_body,
    metric,
    program,
    sidecar,
    twin,
    wait_until,
)
from thunder_middleware.launch import RunningServer


def test_client_leaving_while_waiting_leaves_the_queue(small_twin: RunningServer) -> None:
    with sidecar([small_twin.url], *STRICT_POLICY, "--decay-base", "1.0") as server, \
            httpx.Client(timeout=30) as client:
        held = client.post(server.url + "/v1/chat/completions", json=chat_body("holder", 850))
        assert held.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            client.post(server.url + "/v1/chat/completions",
                        json=chat_body("impatient", 300, salt=5), timeout=0.6)
        wait_until(lambda: program(server.url, "impatient")["waiting_requests"] == 0,
                   what="the abandoned request to leave the gate")
        assert metric(server.url, "thunder_sidecar_gate_waiting_requests") == 0
        steps = program(server.url, "impatient")["timeline"]
        assert [step["outcome"] for step in steps] == ["abandoned"]
        # the program is not stuck: once room exists, its next request goes through
        assert client.post(server.url + "/programs/release",
                           json={"program_id": "holder"}).status_code == 200
        again = client.post(server.url + "/v1/chat/completions",
                            json=chat_body("impatient", 300, salt=5), timeout=10)
        assert again.status_code == 200
        assert program(server.url, "impatient")["timeline"][-1]["outcome"] == "ok"


def _running(twin_url: str) -> float:
    return metric(twin_url, "vllm:num_requests_running")


def test_client_leaving_mid_stream_or_mid_response_aborts_upstream() -> None:
    """A real-time twin needs seconds for 1,000 tokens; the sidecar must close the upstream
    request as soon as its client goes, so the twin's running count drops to 0 at once."""
    with twin(time_scale=1.0) as slow, sidecar([slow.url], *STRICT_POLICY) as server, \
            httpx.Client(timeout=30) as client:
        body = chat_body("streamer", 20, max_tokens=1000, stream=True)
        with client.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in received)
            assert _running(slow.url) == 1
        wait_until(lambda: _running(slow.url) == 0, timeout=3,
                   what="the twin to abort the streamed request")
        wait_until(lambda: program(server.url, "streamer")["inflight_requests"] == 0,
                   what="the sidecar to report the aborted call")
        assert program(server.url, "streamer")["timeline"][-1]["outcome"] == "aborted"
        generated = metric(slow.url, "vllm:generation_tokens_total")
        assert generated < 900

        with pytest.raises(httpx.ReadTimeout):
            client.post(server.url + "/v1/chat/completions",
                        json=chat_body("waiter", 20, max_tokens=1000), timeout=0.8)
        wait_until(lambda: _running(slow.url) == 0, timeout=3,
                   what="the twin to abort the non-streaming request")
        wait_until(lambda: program(server.url, "waiter")["timeline"][-1]["outcome"] == "aborted",
                   what="the aborted non-streaming call on the timeline")
        assert program(server.url, "waiter")["phase"] == "acting"
