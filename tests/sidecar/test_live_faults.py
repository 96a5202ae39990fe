"""Backend faults: a twin killed mid-run, a stream broken midway, a backend coming back; and
request errors (a 500 for one bad request), which must not take a healthy backend down.

Request errors are made with the twin's test-only ``twin_inject_error`` body field (see
``thunder_middleware/twin/server.py``): that request alone is answered with the status.
"""

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

CHAT = "/v1/chat/completions"


def _healthy(url: str) -> dict[str, bool]:
    health = httpx.get(url + "/health", timeout=5).json()
    return {backend["url"]: backend["healthy"] for backend in health["backends"]}


def _count(url: str, name: str, labels: str = "") -> float:
    """A counter that is absent until first incremented (labelled families) reads 0."""
    try:
        return metric(url, name, labels)
    except KeyError:
        return 0.0


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
        # marked down once, whether a failed call or the next scrape saw it first
        assert metric(server.url, "thunder_sidecar_backend_faults_total") == 1

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
        # it says what failed, not how: no exception text, no backend address
        assert "Error" not in error["message"] and dying.url not in error["message"]
        assert "127.0.0.1" not in error["message"], error
        wait_until(lambda: not _healthy(server.url)[dying.url], what="the twin marked down")
        response = httpx.post(server.url + "/v1/chat/completions",
                              json=chat_body("cut", 20), timeout=10)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_healthy_backend"


def test_a_request_error_fails_that_request_only() -> None:
    """A 500 (and a 507 with a JSON error body) from a backend whose /health answers is the
    answer to that one request: the client gets it as an OpenAI error, nothing is retried,
    the backend stays healthy and no program moves."""
    with twin(time_scale=50.0) as first, twin(time_scale=50.0) as second, \
            sidecar([first.url, second.url], *STRICT_POLICY) as server, \
            httpx.Client(timeout=30) as client:
        names = [f"steady-{i}" for i in range(4)]
        for i, name in enumerate(names):
            response = client.post(server.url + CHAT, json=chat_body(name, 40, salt=i))
            assert response.status_code == 200, response.text
        placed = {name: program(server.url, name)["backend"] for name in names}
        victim = names[0]
        for status, stream in ((500, False), (507, True)):
            response = client.post(server.url + CHAT, json=chat_body(
                victim, 40, stream=stream, twin_inject_error=status))
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert f"twin_inject_error={status}" in error["message"]
            assert (error["type"], error["code"]) == ("InternalServerError", "upstream_error")
        assert _healthy(server.url) == {first.url: True, second.url: True}
        for i, name in enumerate(names):  # every program carries on where it was
            response = client.post(server.url + CHAT, json=chat_body(name, 60, salt=i))
            assert response.status_code == 200, response.text
            assert program(server.url, name)["backend"] == placed[name]
        programs = client.get(server.url + "/programs").json()["data"]
        assert sum(p["migrations"] for p in programs) == 0
        failed = [step for step in program(server.url, victim)["timeline"]
                  if step["outcome"] == "failed"]
        assert [(s["backend"], s["retried"]) for s in failed] == [(placed[victim], False)] * 2
        assert _count(server.url, "thunder_sidecar_backend_faults_total") == 0
        assert _count(server.url, "thunder_sidecar_retries_total") == 0
        assert _count(server.url, "thunder_sidecar_requests_total", 'outcome="500"') == 1
        assert _count(server.url, "thunder_sidecar_requests_total", 'outcome="507"') == 1


def test_a_503_is_a_backend_fault_retried_elsewhere() -> None:
    """502/503/504 still mean "this replica cannot serve": marked down, retried once on the
    other replica. The injected 503 follows the request there too, so the retry fails as
    well and the client gets the sidecar's 502; both replicas answer /health and return."""
    with twin(time_scale=50.0) as first, twin(time_scale=50.0) as second, \
            sidecar([first.url, second.url], *STRICT_POLICY) as server, \
            httpx.Client(timeout=30) as client:
        assert client.post(server.url + CHAT, json=chat_body("mover", 40)).status_code == 200
        home = program(server.url, "mover")["backend"]
        response = client.post(server.url + CHAT,
                               json=chat_body("mover", 40, twin_inject_error=503))
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "upstream_unavailable"
        failed = [step for step in program(server.url, "mover")["timeline"]
                  if step["outcome"] == "failed"]
        other = second.url if home == first.url else first.url
        assert [(s["backend"], s["retried"]) for s in failed] == [(home, False), (other, True)]
        assert _count(server.url, "thunder_sidecar_backend_faults_total") == 2
        assert _count(server.url, "thunder_sidecar_retries_total") == 1
        wait_until(lambda: all(_healthy(server.url).values()), timeout=15,
                   what="both twins probed healthy again")
        assert client.post(server.url + CHAT, json=chat_body("mover", 40)).status_code == 200


def test_repeated_request_errors_mark_the_backend_down() -> None:
    """Three request errors in a row (no answer below 500 between them) take the backend
    down for the hold-down, although its /health answers; an answer in between resets."""
    with twin(time_scale=50.0) as only, sidecar([only.url], *STRICT_POLICY) as server, \
            httpx.Client(timeout=30) as client:

        def poison(name: str) -> int:
            response = client.post(server.url + CHAT,
                                   json=chat_body(name, 30, twin_inject_error=500))
            return response.status_code

        assert [poison("a"), poison("b")] == [500, 500]
        assert client.post(server.url + CHAT, json=chat_body("a", 30)).status_code == 200
        assert [poison("a"), poison("b")] == [500, 500]
        assert _healthy(server.url) == {only.url: True}
        assert _count(server.url, "thunder_sidecar_backend_faults_total") == 0
        # the third in a row is still that request's own answer, but the backend goes down
        assert poison("c") == 500
        assert _healthy(server.url) == {only.url: False}
        assert _count(server.url, "thunder_sidecar_backend_faults_total") == 1
        refused = client.post(server.url + CHAT, json=chat_body("a", 30))
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "no_healthy_backend"
        wait_until(lambda: _healthy(server.url)[only.url], timeout=20,
                   what="the backend back after its hold-down")
        assert client.post(server.url + CHAT, json=chat_body("a", 30)).status_code == 200
