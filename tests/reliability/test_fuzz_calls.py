"""Fuzzing the call path and the environment routes together, with a provider on.

Hypothesis drives a live sidecar (local provider, its own environment root) with completion
calls, streaming or not, under any program id (non-ASCII, blank, with slashes, in the body or
as raw UTF-8 header bytes), odd ``stream_options``, and with declarations, execs,
tool-intents, registrations and releases of environments whose fields have any type.
Invariants: never a 5xx, never a traceback, every error OpenAI-shaped; afterwards no
program is in flight or waiting (``GET /programs``), the gate is empty and the watchdog
had nothing to end (``/metrics``), and the environment root holds only live environments.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sidecar.conftest import metric, text_of, wait_until
from thunder_middleware.launch import RunningServer

EXAMPLES = 300
tally: Counter[str] = Counter()


@pytest.fixture(scope="module")
def env_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-envs")


@pytest.fixture(scope="module")
def target(local_sidecar: RunningServer) -> RunningServer:
    return local_sidecar


scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=8), children, max_size=3),
                           max_leaves=12)
# program ids of every shape, most of them valid: a small pool, so calls share programs
program_ids = st.sampled_from(["stk-中", "task/42", "a b", " ", "", "\u3000", "e\u0301",
                               "emoji-🙂", "plain", "x" * 300, "tab\tid", "anon-1"])
# commands a fuzzer may run in an environment: harmless ones, or values of the wrong type
commands = (st.sampled_from(["true", "echo hi", "exit 3", ["echo", "a b"], "sleep 0.2 &"])
            | st.integers() | st.none() | st.lists(st.integers(), max_size=2)
            | st.just(["echo", "nul\x00"]) | st.just([]))
specs = st.fixed_dictionaries({}, optional={
    "workdir": st.sampled_from(["/w", "/a\x00b", "rel", "/" + "d" * 300, "/x/../y"]) | scalars,
    "env": st.dictionaries(st.sampled_from(["A", "B C", "THUNDER_X", "_"]),
                           st.text(max_size=8) | scalars, max_size=2) | scalars,
    "command": commands,
    "cpus": scalars, "memory": scalars | st.sampled_from(["64m", "1k", "9" * 30]),
    "pids": scalars, "ports": st.lists(st.integers(-2, 70000), max_size=2) | scalars,
    "volumes": st.lists(st.fixed_dictionaries({"mount": st.sampled_from(["/v", "v", "/\x00"])
                                               | scalars}), max_size=2) | scalars,
    "preset": st.sampled_from(["shell-sandbox", "nope"]) | scalars,
})


def check(response: httpx.Response, where: str) -> None:
    tally["cases"] += 1
    tally[str(response.status_code)] += 1
    text = response.text
    assert response.status_code < 500, f"{where}: {response.status_code} {text[:300]}"
    assert "Traceback" not in text and 'File "' not in text, f"{where}: {text[:300]}"
    if response.status_code >= 400 and response.status_code != 499:
        error = orjson.loads(text)["error"]
        assert isinstance(error["message"], str) and error["message"], text[:300]
        assert {"message", "type", "param", "code"} <= set(error), text[:300]


def _path(program_id: str) -> str:
    return quote(program_id, safe="") or "%20"


@st.composite
def operations(draw: st.DrawFn) -> tuple[str, str, dict[str, Any], Any]:
    program_id = draw(program_ids)
    kind = draw(st.sampled_from(["chat", "chat", "chat", "declare", "exec", "intent",
                                 "register", "release"]))
    headers: dict[str, Any] = {}
    if kind == "chat":
        body: dict[str, Any] = {"model": "qwen3-8b", "max_tokens": draw(st.integers(1, 6)),
                                "messages": [{"role": "user",
                                              "content": text_of(draw(st.integers(1, 30)))}],
                                "stream": draw(st.booleans())}
        if draw(st.booleans()):
            body["stream_options"] = {"include_usage": draw(scalars)}
        # a header cannot carry surrounding blanks (the client refuses them): those go in
        # the body, like half of the others
        header_safe = program_id == program_id.strip() and "\t" not in program_id
        if draw(st.booleans()) or not header_safe:
            body["program_id"] = program_id
        else:
            headers["x-program-id"] = program_id.encode()  # raw UTF-8 bytes
        return "POST", "/v1/chat/completions", headers, body
    if kind == "declare":
        return "PUT", f"/programs/{_path(program_id)}/environment", headers, draw(specs)
    if kind == "exec":
        body = draw(st.fixed_dictionaries({"command": commands}, optional={
            "timeout_s": scalars, "workdir": st.sampled_from(["/", "/w", "/a\x00b"]) | scalars,
            "env": st.dictionaries(st.text(max_size=4), st.text(max_size=4) | scalars,
                                   max_size=2) | scalars}))
        return "POST", f"/programs/{_path(program_id)}/exec", headers, body
    if kind == "intent":
        return "POST", f"/programs/{_path(program_id)}/tool-intent", headers, draw(
            st.fixed_dictionaries({"tools": st.lists(st.fixed_dictionaries(
                {"name": st.text(max_size=8) | scalars}), max_size=2) | json_values}))
    if kind == "register":
        body = {"program_id": program_id}
        if draw(st.booleans()):
            body["environment"] = draw(specs)
        return "POST", "/programs", headers, body
    return "POST", "/programs/release", headers, {"program_id": program_id}


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(operation=operations())
def test_calls_and_environments_under_fuzz(target: RunningServer,
                                           operation: tuple[str, str, dict[str, Any], Any]) -> None:
    method, path, headers, body = operation
    response = httpx.request(method, target.url + path, content=json.dumps(body).encode(),
                             headers={"content-type": "application/json", **headers},
                             timeout=60)
    check(response, f"{method} {path}")


def test_after_the_fuzz_nothing_is_in_flight(target: RunningServer, env_root: Path) -> None:
    """Runs after the fuzzer (file order)."""

    def settled() -> bool:
        programs = httpx.get(target.url + "/programs", timeout=10).json()["data"]
        return all(p["inflight_requests"] == 0 and p["waiting_requests"] == 0
                   for p in programs)

    wait_until(settled, timeout=30, what="no program in flight after the fuzz")
    assert metric(target.url, "thunder_sidecar_gate_waiting_requests") == 0
    assert metric(target.url, "thunder_sidecar_calls_ended_by_watchdog_total") == 0
    programs = httpx.get(target.url + "/programs", timeout=10).json()["data"]
    live_envs = {handle["env_id"] for p in programs if p["status"] != "terminated"
                 for handle in p["environments"]}
    wait_until(lambda: set(os.listdir(env_root)) <= live_envs, timeout=30,
               what="no environment directory without a live environment")
    assert "Traceback" not in target.log_tail(2_000_000)
    print(f"\nfuzz: {dict(tally)}")
    assert tally["cases"] >= EXAMPLES // 2 and tally["200"] > 0
