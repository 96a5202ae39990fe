"""Bad input on the environment routes and the chat route: a 400 with a clear message, never
a 500, and nothing left on disk by a refused or failed creation (local provider, real
directories under a root of the test's own)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.sidecar.conftest import chat_body, wait_until
from thunder_middleware.launch import RunningServer

DEEP = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000


@pytest.fixture(scope="module")
def env_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("envs")
    # what a creation that died halfway left behind under an earlier sidecar: a directory
    # with no metadata, old enough not to be a creation in flight
    leftover = root / "env-halfmade" / "work"
    leftover.mkdir(parents=True)
    old = time.time() - 3600
    os.utime(leftover, (old, old))
    os.utime(leftover.parent, (old, old))
    return root


@pytest.fixture(scope="module")
def local(local_sidecar: RunningServer) -> RunningServer:
    return local_sidecar


def _error(response: httpx.Response, status: int = 400) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    error: dict[str, object] = response.json()["error"]
    assert error["message"] and {"type", "param", "code"} <= set(error)
    return error


def test_startup_removes_half_made_environment_directories(local: RunningServer,
                                                           env_root: Path) -> None:
    assert not (env_root / "env-halfmade").exists()


@pytest.mark.parametrize("raw", [DEEP, DEEP_OBJECT], ids=["array", "object"])
@pytest.mark.parametrize("method,path", [
    ("PUT", "/programs/deep/environment"),
    ("POST", "/programs/deep/exec"),
    ("POST", "/programs/deep/tool-intent"),
    ("POST", "/programs"),
    ("POST", "/programs/release"),
    ("POST", "/v1/chat/completions"),
])
def test_deeply_nested_json_is_a_400(local: RunningServer, method: str, path: str,
                                     raw: bytes) -> None:
    response = httpx.request(method, local.url + path, content=raw, timeout=30,
                             headers={"content-type": "application/json"})
    _error(response)
    # the connection is not dropped: the sidecar answers the next request
    assert httpx.get(local.url + "/health", timeout=10).status_code == 200


def test_text_part_that_is_not_text_is_a_400(local: RunningServer) -> None:
    body = chat_body("parts", 5)
    body["messages"] = [{"role": "user", "content": [{"type": "text", "text": 5}]}]
    error = _error(httpx.post(local.url + "/v1/chat/completions", json=body, timeout=30))
    assert error["param"] == "messages[0].content[0].text"
    assert httpx.get(local.url + "/programs/parts", timeout=10).status_code == 404


@pytest.mark.parametrize("spec", [
    {"workdir": "/a\u0000b"},
    {"workdir": "/ok", "volumes": [{"mount": "/v\u0000"}]},
    {"env": {"GOOD": "a\u0000b"}},
    {"command": ["sleep\u0000", "5"]},
    {"workdir": "/" + "w" * 5000},
], ids=["workdir-nul", "volume-nul", "env-nul", "command-nul", "workdir-too-long"])
def test_invalid_specs_are_refused_and_leave_nothing(local: RunningServer, env_root: Path,
                                                     spec: dict[str, object]) -> None:
    before = sorted(os.listdir(env_root))
    with httpx.Client(base_url=local.url, timeout=30) as client:
        _error(client.put("/programs/bad-spec/environment", json=spec))
        _error(client.post("/programs", json={"program_id": "bad-spec-2", "environment": spec}))
        assert client.get("/programs/bad-spec").status_code == 404
        assert client.get("/programs/bad-spec-2").status_code == 404
    time.sleep(0.5)  # a creation failing in the background would show by now
    assert sorted(os.listdir(env_root)) == before


def test_exec_arguments_with_nul_are_a_400(local: RunningServer, env_root: Path) -> None:
    with httpx.Client(base_url=local.url, timeout=30) as client:
        declared = client.put("/programs/nul-exec/environment", json={})
        assert declared.status_code == 200, declared.text
        ok = client.post("/programs/nul-exec/exec", json={"command": "echo ok"})
        assert ok.status_code == 200 and ok.json()["stdout"] == "ok\n", ok.text
        for body in ({"command": "true", "workdir": "/a\u0000b"},
                     {"command": ["echo", "a\u0000b"]},
                     {"command": "true", "env": {"X": "a\u0000b"}},
                     {"command": "true", "env": {"BAD NAME": "x"}}):
            _error(client.post("/programs/nul-exec/exec", content=orjson.dumps(body),
                               headers={"content-type": "application/json"}))
        released = client.post("/programs/release", json={"program_id": "nul-exec"})
        assert released.status_code == 200, released.text
    wait_until(lambda: os.listdir(env_root) == [], what="the environment directory removed")


def test_no_server_error_was_logged(local: RunningServer) -> None:
    log = local.log_tail(1_000_000)
    assert "Traceback" not in log and "unexpected error" not in log, log[-4000:]
