"""Two tenants on one sidecar: every cross-tenant access is refused, caps hold, keys matter.

Cross-tenant refusals are 404, never 403: a tenant's program ids live in its own namespace,
so another tenant's program is indistinguishable from one that does not exist (a 403 would
confirm that the id is in use by someone). Missing or wrong keys are 401.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.sidecar.conftest import STRICT_POLICY, chat_body, wait_until
from thunder_middleware.launch import RunningServer, start_sidecar
from thunder_middleware.security import hash_key, new_key
from thunder_middleware.store import SQLiteProgramStore

ALICE, BOB, CAROL, DAVE = new_key(), new_key(), new_key(), new_key()


@pytest.fixture(scope="module")
def guarded(fast_twin: RunningServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[RunningServer, Path]]:
    root = tmp_path_factory.mktemp("tenants")
    config = root / "sidecar.toml"
    config.write_text(f'[[tenants]]\nname = "carol"\nkeys = ["{hash_key(CAROL)}"]\n'
                      "max_programs = 2\nmax_environments = 1\n")
    flags = [flag for flag in STRICT_POLICY if flag not in ("--env-provider", "none")]
    # these tests are about ids and caps, not isolation: the tenants are declared to trust
    # each other on the local provider (test_isolation covers the refusal)
    flags.append("--trust-local-tenants")
    server = start_sidecar([fast_twin.url], extra_args=[*flags, "--config", str(config)], env={
        "THUNDER_API_KEYS": f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}",
        "THUNDER_ENV_ROOT": str(root / "envs")})
    try:
        yield server, root / "envs"
    finally:
        server.stop()


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_missing_or_wrong_keys_are_401(guarded: tuple[RunningServer, Path]) -> None:
    server, _ = guarded
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for headers in ({}, _as("tm-wrong"), {"x-api-key": "tm-wrong"},
                        {"Authorization": f"Basic {ALICE}"}):
            for method, path, body in (
                    ("POST", "/v1/chat/completions", chat_body("x", 5)),
                    ("GET", "/v1/models", None), ("GET", "/programs", None),
                    ("GET", "/programs/x", None), ("POST", "/programs", {"program_id": "x"}),
                    ("POST", "/programs/release", {"program_id": "x"}),
                    ("POST", "/programs/x/exec", {"command": "true"})):
                response = client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.json()["error"]["type"] == "authentication_error"
        assert client.get("/health").status_code == 200  # liveness stays open
        assert client.post("/v1/chat/completions", json=chat_body("k", 5),
                           headers={"x-api-key": ALICE}).status_code == 200


def test_cross_tenant_access_is_refused(guarded: tuple[RunningServer, Path]) -> None:
    server, _ = guarded
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name in ("secret-plan", "same-name"):
            assert client.post("/v1/chat/completions", json=chat_body(name, 20),
                               headers=_as(ALICE)).status_code == 200
        assert client.post("/programs", json={"program_id": "env-box", "environment": {}},
                           headers=_as(ALICE)).status_code == 200
        ran = client.post("/programs/env-box/exec", json={"command": "echo mine"},
                          headers=_as(ALICE))
        assert ran.status_code == 200 and "mine" in ran.json()["stdout"]
        # bob uses the same id: he gets his own program, not alice's
        assert client.post("/v1/chat/completions", json=chat_body("same-name", 20),
                           headers=_as(BOB)).status_code == 200

        bob_sees = {p["program_id"] for p in client.get("/programs", headers=_as(BOB))
                    .json()["data"]}
        assert bob_sees == {"same-name"}
        for method, path, body in (
                ("GET", "/programs/secret-plan", None),
                ("GET", "/programs/env-box/environment", None),
                ("POST", "/programs/release", {"program_id": "secret-plan"}),
                ("POST", "/programs/release", {"program_id": "env-box"}),
                ("POST", "/programs/env-box/exec", {"command": "echo stolen"})):
            response = client.request(method, path, json=body, headers=_as(BOB))
            if method == "GET" and path.endswith("/environment"):
                assert response.status_code == 200 and response.json()["data"] == []
            else:  # exactly what an id nobody uses gets: existence is not leaked
                unknown = client.request(method, path.replace("secret-plan", "nobody").replace(
                    "env-box", "nobody"), json=body and {
                        k: "nobody" for k in body} | ({"command": "true"} if "command" in body
                                                      else {}), headers=_as(BOB))
                assert response.status_code == unknown.status_code == 404, response.text
                assert response.json()["error"]["code"] == unknown.json()["error"]["code"]
                assert "alice" not in response.text

        alice_sees = {p["program_id"]: p for p in client.get("/programs", headers=_as(ALICE))
                      .json()["data"]}
        assert {"secret-plan", "same-name", "env-box"} <= set(alice_sees)
        assert all(alice_sees[name]["status"] != "terminated"
                   for name in ("secret-plan", "env-box"))
        assert alice_sees["same-name"]["summary"]["steps"] == 1  # bob's call is not hers
        assert client.get("/programs/env-box/environment", headers=_as(ALICE)
                          ).json()["data"]
        for name in ("secret-plan", "same-name", "env-box"):
            assert client.post("/programs/release", json={"program_id": name},
                               headers=_as(ALICE)).status_code == 200


def test_tenant_caps_are_429_with_retry_after(guarded: tuple[RunningServer, Path]) -> None:
    server, envs = guarded
    with httpx.Client(base_url=server.url, timeout=30, headers=_as(CAROL)) as client:
        for name in ("c1", "c2"):
            assert client.post("/v1/chat/completions", json=chat_body(name, 10)
                               ).status_code == 200
        for over in (client.post("/v1/chat/completions", json=chat_body("c3", 10)),
                     client.post("/programs", json={"program_id": "c3"})):
            assert over.status_code == 429, over.text
            assert int(over.headers["retry-after"]) >= 1
            assert over.json()["error"]["code"] == "too_many_programs"
        # another tenant is not affected by carol's cap
        assert client.post("/v1/chat/completions", json=chat_body("c3", 10),
                           headers=_as(ALICE)).status_code == 200
        assert client.post("/programs/release", json={"program_id": "c2"}).status_code == 200
        assert client.post("/programs", json={"program_id": "c3"}).status_code == 200
        # one environment at most
        assert client.put("/programs/c1/environment", json={}).status_code == 200
        over_env = client.put("/programs/c3/environment", json={})
        assert over_env.status_code == 429 and over_env.json()["error"]["code"] == \
            "too_many_environments"
        for name in ("c1", "c3"):
            assert client.post("/programs/release", json={"program_id": name}
                               ).status_code == 200
        client.post("/programs/release", json={"program_id": "c3"}, headers=_as(ALICE))
    wait_until(lambda: not any(envs.iterdir()), timeout=20, what="environments reclaimed")


def test_registration_with_an_environment_is_capped_and_leaves_nothing(
        guarded: tuple[RunningServer, Path]) -> None:
    """POST /programs with an environment passes the same caps as PUT .../environment, the
    program cap first, and a refusal declares nothing (no program, no environment)."""
    server, envs = guarded

    def nothing_left(client: httpx.Client, name: str) -> None:
        assert client.get(f"/programs/{name}").status_code == 404
        assert client.get(f"/programs/{name}/environment").json()["data"] == []
        assert name not in {p["program_id"] for p in client.get("/programs").json()["data"]}

    with httpx.Client(base_url=server.url, timeout=30, headers=_as(CAROL)) as client:
        assert client.post("/programs", json={"program_id": "r1", "environment": {}}
                           ).status_code == 200
        over_env = client.post("/programs", json={"program_id": "r2", "environment": {}})
        assert over_env.status_code == 429, over_env.text
        assert over_env.json()["error"]["code"] == "too_many_environments"
        nothing_left(client, "r2")
        # carol now holds her two programs: the program cap answers, before any environment
        assert client.post("/v1/chat/completions", json=chat_body("r3", 10)).status_code == 200
        for refused in (client.post("/programs", json={"program_id": "r4",
                                                       "preset": "local-shell"}),
                        client.put("/programs/r4/environment", json={})):
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "too_many_programs"
            nothing_left(client, "r4")
        for name in ("r1", "r3"):
            assert client.post("/programs/release", json={"program_id": name}
                               ).status_code == 200
    with httpx.Client(base_url=server.url, timeout=30, headers=_as(ALICE)) as client:
        # a tool intent for a program never seen (and no environment) is a 404 that
        # registers nothing
        intent = client.post("/programs/intent-ghost/tool-intent",
                             json={"tools": [{"name": "shell"}]})
        assert intent.status_code == 404, intent.text
        assert intent.json()["error"]["code"] == "not_found"
        nothing_left(client, "intent-ghost")
    wait_until(lambda: not any(envs.iterdir()), timeout=20, what="environments reclaimed")


def test_client_ids_that_look_anonymous_are_ordinary_programs(
        fast_twin: RunningServer, tmp_path: Path) -> None:
    """Only calls without any id are anonymous: a client that names its program anon-1 is
    capped, listed, stored and has its environment reclaimed like any other."""
    state, envs, config = tmp_path / "state", tmp_path / "envs", tmp_path / "sidecar.toml"
    config.write_text(f'[[tenants]]\nname = "dave"\nkeys = ["{hash_key(DAVE)}"]\n'
                      "max_programs = 2\nmax_environments = 1\n")
    flags = [flag for flag in STRICT_POLICY if flag not in ("--env-provider", "none")]
    server = start_sidecar([fast_twin.url], extra_args=[
        *flags, "--config", str(config), "--state-dir", str(state), "--env-provider", "local"],
        env={"THUNDER_ENV_ROOT": str(envs)})
    try:
        with httpx.Client(base_url=server.url, timeout=30, headers=_as(DAVE)) as client:
            for name in ("anon-1", "anon-2"):
                answer = client.post("/v1/chat/completions", json=chat_body(name, 10))
                assert answer.status_code == 200 and answer.headers["x-program-id"] == name
            for over in (client.post("/v1/chat/completions", json=chat_body("anon-3", 10)),
                         client.post("/v1/chat/completions", json=chat_body(None, 10),
                                     headers={"X-Program-Id": "anon-3"}),
                         client.post("/programs", json={"program_id": "anon-3"})):
                assert over.status_code == 429, over.text
                assert over.json()["error"]["code"] == "too_many_programs"
            # a call with no id at all is still anonymous: uncapped, unlisted, not stored
            anonymous = client.post("/v1/chat/completions", json=chat_body(None, 10))
            assert anonymous.status_code == 200
            assert anonymous.headers["x-program-id"].startswith("anon-")
            listed = {p["program_id"]: p for p in client.get("/programs").json()["data"]}
            assert set(listed) == {"anon-1", "anon-2"}
            assert listed["anon-1"]["status"] != "terminated"
            stored = SQLiteProgramStore(state)
            try:
                assert {r.program_id for r in stored.load()} == {"anon-1", "anon-2"}
            finally:
                stored.close()
            assert client.put("/programs/anon-1/environment", json={}).status_code == 200
            ran = client.post("/programs/anon-1/exec", json={"command": "pwd"})
            assert ran.status_code == 200, ran.text
            workdir = Path(ran.json()["stdout"].strip())
            assert workdir.is_dir()
            released = client.post("/programs/release", json={"program_id": "anon-1"})
            assert released.status_code == 200
            assert released.json()["reclaim"]["status"] == "done"
            assert not workdir.exists()
            assert client.post("/programs/release", json={"program_id": "anon-2"}
                               ).status_code == 200
    finally:
        server.stop()


def test_remote_bind_without_keys_is_refused() -> None:
    with pytest.raises(RuntimeError, match="refusing to listen"):
        start_sidecar(["http://127.0.0.1:9"], extra_args=["--host", "0.0.0.0"], timeout=30)
