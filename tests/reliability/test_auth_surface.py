"""What a sidecar with API keys shows without one: liveness (GET and HEAD), nothing else.
The API's documentation and schema need a key (unless --public-docs), and a client that
keeps presenting fresh wrong keys is throttled per address before it costs a scrypt each."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.sidecar.conftest import STRICT_POLICY, chat_body
from thunder_middleware.launch import RunningServer, start_sidecar
from thunder_middleware.security import hash_key, new_key

KEY = new_key()
BURST = 5
DOCS = ("/docs", "/redoc", "/openapi.json")


def _start(fast_twin: RunningServer, **extra: str) -> RunningServer:
    return start_sidecar([fast_twin.url], extra_args=STRICT_POLICY, env={
        "THUNDER_API_KEYS": f"team:{hash_key(KEY)}", "THUNDER_FAILED_KEY_BURST": str(BURST),
        "THUNDER_FAILED_KEY_RATE": "0.2", **extra})


@pytest.fixture(scope="module")
def keyed(fast_twin: RunningServer) -> Iterator[RunningServer]:
    server = _start(fast_twin)
    try:
        yield server
    finally:
        server.stop()


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_health_answers_get_and_head_without_a_key(keyed: RunningServer) -> None:
    assert httpx.get(keyed.url + "/health", timeout=10).status_code == 200
    head = httpx.head(keyed.url + "/health", timeout=10)
    assert head.status_code == 200 and head.content == b""


def test_docs_and_schema_need_a_key(keyed: RunningServer) -> None:
    for path in DOCS:
        refused = httpx.get(keyed.url + path, timeout=10)
        assert refused.status_code == 401, (path, refused.text)
        assert refused.json()["error"]["type"] == "authentication_error"
        served = httpx.get(keyed.url + path, headers=_as(KEY), timeout=10)
        assert served.status_code == 200, (path, served.text)
    schema = httpx.get(keyed.url + "/openapi.json", headers=_as(KEY), timeout=10).json()
    assert "/programs/release" in schema["paths"]


def test_public_docs_flag_opens_them(fast_twin: RunningServer) -> None:
    server = _start(fast_twin, THUNDER_PUBLIC_DOCS="true")
    try:
        for path in DOCS:
            assert httpx.get(server.url + path, timeout=10).status_code == 200, path
        assert httpx.get(server.url + "/programs", timeout=10).status_code == 401
    finally:
        server.stop()


def test_a_flood_of_wrong_keys_is_throttled_per_address(keyed: RunningServer) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        # the valid key is checked (and cached) before the flood
        assert client.post("/v1/chat/completions", json=chat_body("valid", 5),
                           headers=_as(KEY)).status_code == 200
        statuses = [client.get("/programs", headers=_as(new_key())).status_code
                    for _ in range(3 * BURST)]
        assert statuses[:BURST] == [401] * BURST, statuses
        assert set(statuses[BURST + 1:]) == {429}, statuses
        refused = client.get("/programs", headers=_as(new_key()))
        assert refused.status_code == 429 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "too_many_failed_keys"
        # a known key is never throttled, whoever shares its address
        assert client.post("/v1/chat/completions", json=chat_body("valid", 5),
                           headers=_as(KEY)).status_code == 200
        assert client.get("/programs", headers=_as(KEY)).status_code == 200
