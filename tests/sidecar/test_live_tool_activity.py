"""Tools and the program lifecycle over real HTTP (local provider): a running exec keeps its
program alive, exec time lands on the timeline, release answers after the reclaim, and
--env-presets adds named environments."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.sidecar.conftest import chat_body, metric, program, sidecar, wait_until
from thunder_middleware.launch import RunningServer

# quick policy checks, a short idle timeout: a tool longer than it is the case under test
FLAGS = ["--no-cost-aware", "--metrics-interval", "0.2", "--check-interval", "0.25",
         "--starvation-bound", "20", "--env-provider", "local"]
TOOL_S = 3.0  # twice the idle timeout


def _exec(url: str, program_id: str, command: list[str] | str) -> httpx.Response:
    return httpx.post(f"{url}/programs/{program_id}/exec",
                      json={"command": command, "timeout_s": 30}, timeout=60)


def test_a_tool_longer_than_the_idle_timeout_keeps_its_program_alive(
        twin_server: RunningServer) -> None:
    with sidecar([twin_server.url], *FLAGS, "--idle-timeout", "1.5") as server, \
            httpx.Client(timeout=60) as client:
        for program_id in ("caller", "silent"):
            registered = client.post(server.url + "/programs",
                                     json={"program_id": program_id, "preset": "local-shell"})
            assert registered.status_code == 200, registered.text
        # "caller" made an LLM call (the policy's idle clock runs); "silent" never did (the
        # runtime's own clock for programs the policy has not seen)
        assert client.post(server.url + "/v1/chat/completions",
                           json=chat_body("caller", 20)).status_code == 200
        sleep = ["sh", "-c", f"sleep {TOOL_S}; echo done"]
        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(lambda pid: _exec(server.url, pid, sleep), ["caller", "silent"]))
        for run in runs:
            assert run.status_code == 200, run.text
            assert run.json()["exit_code"] == 0 and run.json()["stdout"].strip() == "done"
        for program_id in ("caller", "silent"):
            state = program(server.url, program_id)
            assert state["terminated_reason"] is None, state
            # exec time is tool time at once, before any further LLM call
            assert state["summary"]["tool_s"] >= TOOL_S, state["summary"]
        # the exec's time is the next step's tool time, counted once
        assert client.post(server.url + "/v1/chat/completions",
                           json=chat_body("caller", 30)).status_code == 200
        caller = program(server.url, "caller")
        assert caller["timeline"][-1]["tool_s"] >= TOOL_S
        assert caller["timeline"][0]["tool_s"] == 0.0
        assert TOOL_S <= caller["summary"]["tool_s"] < 2 * TOOL_S
        # idle expiry still works once the tools stop
        for program_id in ("caller", "silent"):
            wait_until(lambda pid=program_id: program(server.url, pid)["terminated_reason"]
                       == "expired", timeout=20, what=f"{program_id} to expire when idle")


def test_exec_time_is_tool_time_on_the_timeline(twin_server: RunningServer) -> None:
    with sidecar([twin_server.url], *FLAGS) as server, httpx.Client(timeout=60) as client:
        client.post(server.url + "/programs", json={"program_id": "tooler",
                                                    "preset": "local-shell"})
        assert client.post(server.url + "/v1/chat/completions",
                           json=chat_body("tooler", 20)).status_code == 200
        assert _exec(server.url, "tooler", "sleep 0.3").json()["exit_code"] == 0
        assert _exec(server.url, "tooler", "sleep 0.3; exit 3").json()["exit_code"] == 3
        before = program(server.url, "tooler")
        assert before["summary"]["steps"] == 1
        assert 0.6 <= before["summary"]["tool_s"] < 5, before["summary"]  # shown at once
        assert client.post(server.url + "/v1/chat/completions",
                           json=chat_body("tooler", 30)).status_code == 200
        after = program(server.url, "tooler")
        assert after["timeline"][0]["tool_s"] == 0.0
        assert after["timeline"][1]["tool_s"] >= 0.6
        assert abs(after["timeline"][1]["tool_s"] - after["summary"]["tool_s"]) < 1e-3  # once


def test_release_answers_after_the_reclaim(twin_server: RunningServer) -> None:
    with sidecar([twin_server.url], *FLAGS) as server, httpx.Client(timeout=60) as client:
        client.post(server.url + "/programs", json={"program_id": "done-soon",
                                                    "preset": "local-shell"})
        ran = _exec(server.url, "done-soon", "pwd")
        assert ran.status_code == 200, ran.text
        workdir = Path(ran.json()["stdout"].strip())
        assert workdir.is_dir()
        assert metric(server.url, "thunder_tool_environments", 'state="ready"') == 1

        released = client.post(server.url + "/programs/release",
                               json={"program_id": "done-soon"})
        assert released.status_code == 200, released.text
        answer = released.json()
        assert answer["status"] == "terminated"
        reclaim = answer["reclaim"]
        assert reclaim["status"] == "done" and reclaim["program_id"] == "done-soon"
        assert reclaim["environments"] == 1 and reclaim["directories"] >= 1
        assert [env["state"] for env in answer["environments"]] == ["reclaimed"]
        # final the moment it answers: no polling
        assert not workdir.exists()
        assert [env["state"] for env in program(server.url, "done-soon")["environments"]] \
            == ["reclaimed"]
        assert metric(server.url, "thunder_tool_environments", 'state="ready"') == 0

        # a program without an environment: nothing to reclaim, still a final answer
        client.post(server.url + "/programs", json={"program_id": "bare"})
        bare = client.post(server.url + "/programs/release", json={"program_id": "bare"})
        assert bare.status_code == 200 and bare.json()["reclaim"]["environments"] == 0


def test_release_that_outlasts_its_bound_says_pending(twin_server: RunningServer) -> None:
    with sidecar([twin_server.url], *FLAGS, "--release-timeout", "0.000001") as server, \
            httpx.Client(timeout=60) as client:
        client.post(server.url + "/programs", json={"program_id": "slow",
                                                    "preset": "local-shell"})
        workdir = Path(_exec(server.url, "slow", "pwd").json()["stdout"].strip())
        released = client.post(server.url + "/programs/release", json={"program_id": "slow"})
        assert released.status_code == 200, released.text
        assert released.json()["reclaim"]["status"] == "pending"
        wait_until(lambda: not workdir.exists(), what="the background reclaim to finish")


def test_env_presets_file_adds_named_environments(twin_server: RunningServer,
                                                  tmp_path: Path) -> None:
    presets = tmp_path / "presets.toml"
    presets.write_text('[presets.team-shell]\nenv = { TEAM = "blue" }\n'
                       '[presets.local-shell]\nenv = { TEAM = "redefined" }\n')
    with sidecar([twin_server.url], *FLAGS, "--env-presets", str(presets)) as server, \
            httpx.Client(timeout=60) as client:
        for preset, team in (("team-shell", "blue"), ("local-shell", "redefined")):
            registered = client.post(server.url + "/programs",
                                     json={"program_id": preset, "preset": preset})
            assert registered.status_code == 200, registered.text
            ran = _exec(server.url, preset, "echo $TEAM")
            assert ran.status_code == 200 and ran.json()["stdout"].strip() == team
        declared = client.put(server.url + "/programs/other/environment",
                              json={"preset": "team-shell"})
        assert declared.status_code == 200, declared.text
        unknown = client.put(server.url + "/programs/other/environment",
                             json={"preset": "nope"})
        assert unknown.status_code == 400
        assert "team-shell" in unknown.json()["error"]["message"]
        assert "busybox" in unknown.json()["error"]["message"]  # bundled ones stay


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thunder_middleware", "serve", "--backend",
         "http://127.0.0.1:9", "--port", "9", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_a_bad_env_presets_file_is_a_clear_startup_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[presets.x\n")
    invalid = tmp_path / "invalid.toml"
    invalid.write_text('[presets.tiny]\nmemory = "lots"\n')
    cases = [
        (("--env-presets", str(tmp_path / "missing.toml")), None, "cannot read"),
        (("--env-presets", str(broken)), None, "not valid TOML"),
        (("--env-presets", str(invalid)), None, "preset 'tiny'"),
        ((), {"THUNDER_ENV_PRESETS": str(invalid)}, "memory"),
    ]
    for args, env, reason in cases:
        result = _serve(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert "invalid --env-presets" in result.stderr and reason in result.stderr, \
            result.stderr
        assert "Traceback" not in result.stderr
