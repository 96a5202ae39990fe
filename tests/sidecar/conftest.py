"""Helpers of the live sidecar tests: real twins and sidecars as processes, real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

from thunder_middleware.launch import RunningServer, start_sidecar, start_twin

WORDS = ["alfa", "brav", "char", "delt", "echo", "foxt", "golf", "hote", "indi", "juli",
         "kilo", "lima", "mike", "nove", "osca", "papa", "queb", "rome", "sier", "tang"]

# flags that make the policy deterministic enough to assert on: the published policy (no
# cost model), quick backend scrapes, a short starvation bound as a safety net
STRICT_POLICY = ["--no-cost-aware", "--metrics-interval", "0.2", "--check-interval", "0.5",
                 "--starvation-bound", "20", "--env-provider", "none"]


def text_of(tokens: int, salt: int = 0) -> str:
    """About ``tokens`` twin tokens (the twin cuts words into chunks of four characters)."""
    return " ".join(WORDS[(i * 7 + salt) % len(WORDS)] for i in range(tokens))


def chat_body(program_id: str | None, tokens: int, *, max_tokens: int = 8, salt: int = 0,
              **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "qwen3-8b",
        "messages": [{"role": "user", "content": text_of(tokens, salt)}],
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
    }
    if program_id is not None:
        body["program_id"] = program_id
    body.update(extra)
    return body


@contextlib.contextmanager
def sidecar(backends: Sequence[str], *flags: str) -> Iterator[RunningServer]:
    server = start_sidecar(list(backends), extra_args=list(flags))
    try:
        yield server
    finally:
        server.stop()
        if server.process.returncode not in (0, None):
            print(server.log_tail())


@contextlib.contextmanager
def twin(**kwargs: Any) -> Iterator[RunningServer]:
    server = start_twin(**kwargs)
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def metric(url: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` (optionally only lines containing ``labels``)."""
    total = 0.0
    found = False
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise KeyError(name)
    return total


def program(url: str, program_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/programs/{program_id}", timeout=5)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def run_agent(client: httpx.AsyncClient, url: str, program_id: str, *, steps: int,
                    start_tokens: int, growth: int, tool_s: float, salt: int,
                    release: bool = True) -> list[int]:
    """A closed-loop agent: a call, a tool pause, a call with a longer context..."""
    statuses = []
    for step in range(steps):
        body = chat_body(program_id, start_tokens + growth * step, max_tokens=8, salt=salt)
        response = await client.post(url + "/v1/chat/completions", json=body)
        statuses.append(response.status_code)
        assert response.status_code == 200, response.text
        await asyncio.sleep(tool_s)
    if release:
        released = await client.post(url + "/programs/release", json={"program_id": program_id})
        assert released.status_code == 200, released.text
    return statuses
