"""Backend faults: a twin killed mid-run, a stream broken midway, a backend coming back."""

from __future__ import annotations

import asyncio
import threading

import httpx
import orjson

from tests.sidecar.conftest import (
    STRICT_POLICY,
    chat_body,
    metric,
    program,
    run_agent,
    sidecar,
    twin,
    wait_until,
)
from thunder_middleware.launch import start_twin


def _healthy(url: str) -> dict[str, bool]:
    health = httpx.get(url + "/health", timeout=5).json()
    return {backend["url"]: backend["healthy"] for backend in health["backends"]}


def test_killed_backend_moves_its_programs_and_comes_back() -> None:
    """Kill one of two twins while eight agents run: every agent finishes every step (the
    call that hit the dead twin is retried on the other), the programs of the dead twin
    migrate, and a twin restarted on the same port takes new programs again."""
    with twin(time_scale=5.0) as doomed, twin(time_scale=5.0) as survivor, \
            sidecar([doomed.url, survivor.url], *STRICT_POLICY) as server:

        async def fleet() -> list[list[int]]:
            async with httpx.AsyncClient(timeout=60) as client:
                agents = [asyncio.create_task(run_agent(
                    client, server.url, f"worker-{i}", steps=6, start_tokens=60, growth=30,
                    tool_s=0.15, salt=i, release=False)) for i in range(8)]
                await asyncio.sleep(0.6)
                await asyncio.to_thread(doomed.kill)
                return await asyncio.gather(*agents)

        results = asyncio.run(fleet())
        assert all(statuses == [200] * 6 for statuses in results)
        assert _healthy(server.url) == {doomed.url: False, survivor.url: True}
        programs = httpx.get(server.url + "/programs", timeout=5).json()["data"]
        assert all(p["summary"]["steps"] >= 6 for p in programs)
        assert all(p["backend"] == survivor.url for p in programs)
        assert sum(p["migrations"] for p in programs) >= 1
        assert metric(server.url, "thunder_sidecar_backend_faults_total") >= 1

        revived = start_twin(port=doomed.port, time_scale=5.0)
        try:
            wait_until(lambda: _healthy(server.url)[doomed.url], timeout=15,
                       what="the restarted twin to be probed healthy")
            # now the other twin dies: all work, old programs and new, goes to the revived one
            survivor.kill()
            with httpx.Client(timeout=30) as client:
                for name in ("worker-0", "worker-5", "fresh-0"):
                    response = client.post(server.url + "/v1/chat/completions",
                                           json=chat_body(name, 50))
                    assert response.status_code == 200, response.text
                    assert program(server.url, name)["backend"] == doomed.url
            assert metric(revived.url, "vllm:prompt_tokens_total") >= 50
        finally:
            revived.stop()


def test_stream_broken_midway_ends_with_an_error_event() -> None:
    with twin(time_scale=1.0) as dying, sidecar([dying.url], *STRICT_POLICY) as server:
        body = chat_body("cut", 20, max_tokens=1000, stream=True)
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                          timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            threading.Thread(target=dying.kill).start()
            payloads = [line[6:] for line in lines if line.startswith("data: ")]
        assert payloads[-1] == "[DONE]"
        error = orjson.loads(payloads[-2])["error"]
        assert error["code"] == "upstream_stream_broken" and error["message"]
        wait_until(lambda: not _healthy(server.url)[dying.url], what="the twin marked down")
        response = httpx.post(server.url + "/v1/chat/completions",
                              json=chat_body("cut", 20), timeout=10)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_healthy_backend"
