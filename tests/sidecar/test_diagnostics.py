"""What a user sees when something is set up wrong: each message names the cause."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.sidecar.conftest import chat_body, sidecar, twin, wait_until
from thunder_middleware.integrations.client import ThunderClient
from thunder_middleware.launch import RunningServer, free_port


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def log_lines(server: RunningServer, text: str) -> list[str]:
    return [line for line in server.log_tail(200_000).splitlines() if text in line]


def test_a_dead_backend_is_named_with_its_cause_in_the_log_and_the_503() -> None:
    dead = dead_url()
    with sidecar([dead], "--env-provider", "none") as server:
        wait_until(lambda: bool(log_lines(server, f"backend {dead} unhealthy")),
                   what="the start-up warning about the dead backend")
        warning = log_lines(server, f"backend {dead} unhealthy")
        assert len(warning) == 1 and "WARNING" in warning[0]  # once, not once per probe
        assert "nothing listening" in warning[0]
        time.sleep(1.0)  # several probes later: still one line
        assert len(log_lines(server, f"backend {dead} unhealthy")) == 1
        answer = httpx.post(server.url + "/v1/chat/completions", json=chat_body("p", 8))
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["code"] == "no_healthy_backend"
        assert dead in error["message"] and "nothing listening" in error["message"]
        (backend,) = httpx.get(server.url + "/health").json()["backends"]
        assert backend["healthy"] is False and "nothing listening" in backend["reason"]


def test_a_healthy_backend_is_logged_at_info_and_v1_is_accepted() -> None:
    with twin(time_scale=200.0) as engine, \
            sidecar([engine.url + "/v1"], "--env-provider", "none") as server:
        health = httpx.get(server.url + "/health").json()
        assert [(b["url"], b["healthy"], b["reason"]) for b in health["backends"]] == [
            (engine.url, True, None)]
        healthy = log_lines(server, f"backend {engine.url} healthy")
        assert len(healthy) == 1 and " INFO " in healthy[0]
        assert httpx.post(server.url + "/v1/chat/completions",
                          json=chat_body("p", 8)).status_code == 200
        assert not log_lines(server, "httpx: HTTP Request")  # no line per scrape


def test_a_port_in_use_is_reported_before_anything_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "thunder_middleware", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--backend", dead_url(), "--env-provider", "local"],
            capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"cannot listen on 127.0.0.1:{port}" in output
    assert "unhealthy" not in output and "orphans" not in output  # nothing was probed
    assert elapsed < 30


def test_serve_help_is_readable_at_80_columns_and_names_the_variables() -> None:
    result = subprocess.run([sys.executable, "-m", "thunder_middleware", "serve", "--help"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    flat = " ".join(text.split())
    for option, variable in [("--env-create-concurrency", "THUNDER_ENV_CREATE_CONCURRENCY"),
                             ("--max-programs-per-tenant", "THUNDER_MAX_PROGRAMS_PER_TENANT"),
                             ("--allow-unauthenticated-remote",
                              "THUNDER_ALLOW_UNAUTHENTICATED_REMOTE"),
                             ("--backend", "THUNDER_BACKENDS"), ("--port", "THUNDER_PORT")]:
        assert option in text and f"env: {variable}]" in flat, option


def test_an_integration_pointed_at_the_engine_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """A create_agent whose model points at the engine, not the sidecar: one clear warning
    naming the URL, none per tool call or release, and the agent still runs."""
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    from thunder_middleware.integrations.langchain import ThunderMiddleware

    @tool
    def grep(pattern: str) -> str:
        """Search the repository."""
        return "utils.py:3: def helper():"

    caplog.set_level(logging.WARNING)
    with twin(time_scale=200.0) as engine:
        llm = ChatOpenAI(model="qwen3-8b", base_url=engine.url + "/v1",  # type: ignore[arg-type]
                         api_key="EMPTY", max_tokens=512)
        agent = create_agent(llm, [grep], middleware=[ThunderMiddleware()])
        for _ in range(2):
            state = agent.invoke({"messages": [{"role": "user", "content": "Find helper."}]},
                                 context={"program_id": f"task-{free_port()}"})
            assert any(getattr(m, "tool_calls", None) for m in state["messages"])
        client = ThunderClient(engine.url + "/v1", attempts=1)
        assert client.release("task-1") is None
        client.close()
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("thunder_middleware")]
    assert len(ours) == 1, ours
    assert "not a thunder-middleware sidecar" in ours[0] and engine.url in ours[0]
