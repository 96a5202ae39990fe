"""Property-based fuzzing of every endpoint of a live sidecar.

Schemathesis generates cases from the sidecar's own OpenAPI schema (valid and invalid ones)
for the control API; the OpenAI routes read raw bodies (no schema), so hypothesis generates
their bodies: arbitrary JSON, and chat bodies whose fields have the wrong types or values.
Invariants: never a 5xx, never a traceback in a body, every error is OpenAI-shaped, and
after the run no program is stuck waiting and /health is ok.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import orjson
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.sidecar.conftest import wait_until
from thunder_middleware.launch import RunningServer

EXAMPLES_PER_OPERATION = 15
OPENAI_EXAMPLES = 90
SETTINGS = settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

tally: Counter[str] = Counter()


def check_answer(status: int, text: str, where: str) -> None:
    tally["cases"] += 1
    if status == 501 and '"environments_disabled"' in text:
        tally["501 environments off"] += 1  # deliberate: the fixture runs without a provider
    elif status >= 500:
        tally["5xx"] += 1
        raise AssertionError(f"{where}: {status} {text[:300]}")
    assert "Traceback" not in text and 'File "' not in text, f"{where}: {text[:300]}"
    if status >= 400:
        error = orjson.loads(text)["error"]
        assert isinstance(error["message"], str) and error["message"], text[:300]
        assert {"message", "type", "param", "code"} <= set(error), text[:300]


def fuzz_operation(url: str, label: str, strategy: Any) -> None:
    @SETTINGS
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        response = case.call(base_url=url, timeout=30)
        check_answer(response.status_code, response.text, label)

    fuzz()


def test_control_api_from_openapi_schema(target: RunningServer) -> None:
    raw = httpx.get(target.url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(raw)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    labels = {operation.label for operation in operations}
    assert {"POST /programs", "POST /programs/release", "GET /programs/{program_id}"} <= labels
    for operation in operations:
        if operation.path.startswith("/v1/"):
            continue  # raw-body routes: fuzzed by the hypothesis tests below
        strategy = (operation.as_strategy(GenerationMode.POSITIVE)
                    | operation.as_strategy(GenerationMode.NEGATIVE))

        fuzz_operation(target.url, operation.label, strategy)
    assert tally["cases"] >= 5 * EXAMPLES_PER_OPERATION // 2


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)

weird = json_values | st.integers(min_value=-(2**70), max_value=2**70)

chat_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["qwen3-8b", "", "missing-model"]) | weird,
     "messages": st.lists(st.fixed_dictionaries(
         {"role": st.sampled_from(["user", "system", "assistant", "tool", "nobody"]) | weird,
          "content": st.text(max_size=60) | weird}), max_size=3) | weird},
    optional={"max_tokens": st.integers(min_value=-5, max_value=6) | weird,
              "program_id": st.text(max_size=300) | weird,
              "stream": st.booleans() | weird,
              "stream_options": st.fixed_dictionaries({"include_usage": weird}) | weird,
              "metadata": st.fixed_dictionaries({"program_id": weird}) | weird,
              "temperature": st.floats(allow_nan=False) | weird,
              "n": st.integers(min_value=-1, max_value=2) | weird})


def _send(url: str, path: str, content: bytes, headers: dict[str, str]) -> None:
    response = httpx.post(url + path, content=content, timeout=60,
                          headers={"content-type": "application/json", **headers})
    check_answer(response.status_code, response.text, f"POST {path}")


@settings(max_examples=OPENAI_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(body=chat_bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
       header_id=st.none() | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                                     max_size=300))
def test_openai_routes_with_hostile_bodies(target: RunningServer, body: dict[str, Any],
                                           path: str, header_id: str | None) -> None:
    if path == "/v1/completions" and "messages" in body:
        body["prompt"] = body.pop("messages")
    headers = {"x-program-id": header_id} if header_id else {}
    _send(target.url, path, json.dumps(body).encode(), headers)  # big ints too


@settings(max_examples=OPENAI_EXAMPLES // 2, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200) | json_values.map(lambda value: json.dumps(value).encode()))
def test_openai_routes_with_arbitrary_bytes(target: RunningServer, raw: bytes) -> None:
    _send(target.url, "/v1/chat/completions", raw, {})


def test_after_the_fuzz_nothing_is_stuck(target: RunningServer) -> None:
    """Runs after the fuzzers (file order): no program waits, the sidecar is healthy."""

    def settled() -> bool:
        programs = httpx.get(target.url + "/programs", timeout=10).json()["data"]
        return all(p["waiting_requests"] == 0 and p["inflight_requests"] == 0
                   and p["status"] != "paused" for p in programs)

    wait_until(settled, timeout=30, what="no program left waiting after the fuzz")
    health = httpx.get(target.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["waiting_requests"] == 0
    print(f"\nfuzz: {dict(tally)}")
    assert tally["cases"] > 0 and tally["5xx"] == 0
