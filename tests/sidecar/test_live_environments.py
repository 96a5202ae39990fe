"""Tool environments through the sidecar (local provider): prepared at registration, used,
timed on the timeline, reclaimed on release and on idle expiry."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.sidecar.conftest import STRICT_POLICY, chat_body, program, sidecar, wait_until
from thunder_middleware.launch import RunningServer, running, start_sidecar

FLAGS = [flag for flag in STRICT_POLICY if flag not in ("--env-provider", "none")]


def test_environment_lifecycle_follows_the_program(twin_server: RunningServer) -> None:
    with sidecar([twin_server.url], *FLAGS, "--env-provider", "local",
                 "--idle-timeout", "2") as server, httpx.Client(timeout=60) as client:
        registered = client.post(server.url + "/programs",
                                 json={"program_id": "builder", "preset": "local-shell"})
        assert registered.status_code == 200, registered.text
        environment = registered.json()["environments"][0]
        assert environment["program_id"] == "builder"  # never the tenant-namespaced key
        ran = client.post(server.url + "/programs/builder/exec",
                          json={"command": ["sh", "-c", "sleep 0.2; pwd"]})
        assert ran.status_code == 200 and ran.json()["exit_code"] == 0
        workdir = Path(ran.json()["stdout"].strip())
        assert workdir.is_dir()
        assert client.post(server.url + "/v1/chat/completions",
                           json=chat_body("builder", 20)).status_code == 200
        state = program(server.url, "builder")
        assert state["environments"][0]["state"] == "ready"
        assert state["timeline"][0]["tool_s"] >= 0.2  # the exec ran before this step

        released = client.post(server.url + "/programs/release", json={"program_id": "builder"})
        assert released.status_code == 200
        wait_until(lambda: not workdir.exists(), what="the released environment to be removed")
        gone = client.post(server.url + "/programs/builder/exec", json={"command": "true"})
        assert gone.status_code == 409 and gone.json()["error"]["code"] == "program_released"

        # a crashed agent: registered with an environment, then silent past the idle timeout
        client.post(server.url + "/programs", json={"program_id": "ghost",
                                                    "preset": "local-shell"})
        ghost = client.post(server.url + "/programs/ghost/exec", json={"command": "pwd"})
        ghost_dir = Path(ghost.json()["stdout"].strip())
        wait_until(lambda: program(server.url, "ghost")["terminated_reason"] == "expired",
                   timeout=15, what="the silent program to expire")
        wait_until(lambda: not ghost_dir.exists(), what="the expired program's environment gone")

        bad = client.post(server.url + "/programs", json={"program_id": "typo",
                                                          "preset": "no-such-preset"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_preset"
        assert client.get(server.url + "/programs/typo").status_code == 404


def _environment(url: str, program_id: str) -> dict[str, Any]:
    environment: dict[str, Any] = program(url, program_id)["environments"][0]
    return environment


def test_prepare_ahead_readies_the_next_paused_programs_environment(
        small_twin: RunningServer) -> None:
    """Two programs whose environments were removed are paused under KV pressure: the one at
    the head of the restore order gets its environment back while still paused (before its
    restore), the one beyond --prep-ahead 1 does not; a re-creation passes the tenant's
    environment cap like any other."""
    flags = [*FLAGS, "--env-provider", "local", "--decay-base", "1.0", "--prep-ahead", "1"]
    cap = {"THUNDER_MAX_ENVIRONMENTS_PER_TENANT": "2"}
    with running(start_sidecar([small_twin.url], extra_args=flags, env=cap)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        url = server.url

        def chat(program_id: str, tokens: int, salt: int) -> None:
            response = client.post("/v1/chat/completions",
                                   json=chat_body(program_id, tokens, salt=salt))
            assert response.status_code == 200, response.text

        def register(program_id: str) -> httpx.Response:
            return client.post("/programs", json={"program_id": program_id,
                                                  "preset": "local-shell"})

        for program_id in ("a", "b"):
            assert register(program_id).status_code == 200
        chat("big", 100, 0)  # three acting programs on the 1,024-token twin
        chat("a", 150, 1)
        chat("b", 250, 2)
        removed = {program_id: _environment(url, program_id)["env_id"] for program_id in "ab"}
        for program_id in "ab":  # reclaimed, not final: the next use re-creates them
            assert client.delete(f"/programs/{program_id}/environment").status_code == 200
            assert _environment(url, program_id)["state"] == "reclaimed"
        for program_id in ("c", "d"):  # the tenant's two environments are now c's and d's
            assert register(program_id).status_code == 200
        assert register("e").status_code == 429

        chat("big", 900, 0)  # big grows: a, then b (acting, smallest c first) are paused
        wait_until(lambda: {program(url, p)["status"] for p in "ab"} == {"paused"},
                   what="a and b to be paused")
        time.sleep(1.5)  # three ticks: a heads the restore order, but the cap refuses
        assert _environment(url, "a")["env_id"] == removed["a"]

        for program_id in ("c", "d"):
            assert client.delete(f"/programs/{program_id}/environment").status_code == 200
        wait_until(lambda: _environment(url, "a")["env_id"] != removed["a"],
                   what="prepare-ahead to re-create the environment of a")
        assert _environment(url, "a")["state"] in ("queued", "preparing", "ready")
        wait_until(lambda: _environment(url, "a")["state"] == "ready",
                   what="a's environment to be ready")
        time.sleep(1.0)  # more ticks: nothing else is prepared, nothing restored
        assert program(url, "a")["status"] == "paused" and program(url, "a")["restores"] == 0
        beyond = _environment(url, "b")  # b is beyond --prep-ahead 1
        assert (beyond["env_id"], beyond["state"]) == (removed["b"], "reclaimed")

        assert client.post("/programs/release", json={"program_id": "big"}).status_code == 200
        wait_until(lambda: program(url, "a")["restores"] == 1, what="a to be restored")
        assert _environment(url, "a")["state"] == "ready"


def test_max_environments_makes_an_exec_wait_not_fail(twin_server: RunningServer) -> None:
    """--max-environments 1: a second program's environment queues, and its exec waits for
    the first program's release instead of failing."""
    with sidecar([twin_server.url], *FLAGS, "--env-provider", "local",
                 "--max-environments", "1") as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        for program_id in ("first", "second"):
            registered = client.post("/programs", json={"program_id": program_id,
                                                        "preset": "local-shell"})
            assert registered.status_code == 200, registered.text
        wait_until(lambda: _environment(server.url, "first")["state"] == "ready",
                   what="the first environment to be ready")
        assert _environment(server.url, "second")["state"] == "queued"
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(httpx.post, f"{server.url}/programs/second/exec",
                                  json={"command": "echo finally", "timeout_s": 30}, timeout=60)
            time.sleep(1.0)
            assert not waiting.done(), "the exec must wait for a slot"
            assert _environment(server.url, "second")["state"] == "queued"
            released = client.post("/programs/release", json={"program_id": "first"})
            assert released.status_code == 200
            result = waiting.result(timeout=30)
        assert result.status_code == 200, result.text
        assert result.json()["stdout"] == "finally\n"
        assert result.json()["waited_for_ready_s"] >= 0.9
