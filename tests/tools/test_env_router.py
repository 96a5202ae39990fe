"""The environment routes over real HTTP: a uvicorn app mounting the router with simple hooks."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from thunder_middleware.launch import RunningServer


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_declare_intent_exec_release(local_app: RunningServer, app_root: Path) -> None:
    with httpx.Client(base_url=local_app.url, timeout=30, trust_env=False) as client:
        spec = {"readiness": {"command": ["sleep", "0.5"], "timeout_s": 10}, "ports": [9000]}
        declared = client.put("/programs/agent-1/environment", json=spec)
        assert declared.status_code == 200, declared.text
        handle = declared.json()
        assert handle["program_id"] == "agent-1" and handle["provider"] == "local"
        assert handle["exec_path"] == "/programs/agent-1/exec"

        intent = client.post("/programs/agent-1/tool-intent",
                             json={"tools": [{"name": "bash", "arguments": {"cmd": "ls"}}]})
        assert intent.status_code == 200 and intent.json()["env_id"] == handle["env_id"]

        ran = client.post("/programs/agent-1/exec",
                          json={"command": "echo $PORT_9000 > port; cat port", "timeout_s": 10})
        assert ran.status_code == 200, ran.text
        body = ran.json()
        assert set(body) >= {"exit_code", "stdout", "stderr", "duration_s", "truncated",
                             "timed_out"}
        assert body["exit_code"] == 0

        listed = client.get("/programs/agent-1/environment").json()["data"]
        assert listed[0]["state"] == "ready"
        assert body["stdout"].strip() == str(listed[0]["ports"]["9000"])

        program = client.get("/programs/agent-1").json()
        assert len(program["tool_time"]) == 1
        started_at, duration = program["tool_time"][0]
        assert abs(started_at - time.time()) < 60 and duration >= body["duration_s"]

        released = client.post("/programs/release", json={"program_id": "agent-1"}).json()
        assert released["environments"] == 1 and released["directories"] == 1
        assert list(app_root.iterdir()) == []
        after = client.post("/programs/agent-1/exec", json={"command": "true"})
        assert_openai_error(after, 409, "program_released")
        assert client.get("/programs/agent-1/environment").json()["data"][0]["state"] == (
            "reclaimed")


def test_preset_and_bad_input(local_app: RunningServer, app_root: Path) -> None:
    with httpx.Client(base_url=local_app.url, timeout=30, trust_env=False) as client:
        ok = client.put("/programs/p/environment", json={"preset": "local-shell"})
        assert ok.status_code == 200, ok.text
        assert_openai_error(client.put("/programs/p/environment", json={"preset": "nope"}),
                            400, "unknown_preset")
        bad_limits = client.put("/programs/q/environment", json={"memory": "-5", "cpus": 0})
        assert assert_openai_error(bad_limits, 400, "invalid_environment_spec")["param"]
        bad_cpus = client.put("/programs/q/environment", json={"cpus": -1})
        assert assert_openai_error(bad_cpus, 400)["param"] == "cpus"
        unknown_field = client.put("/programs/q/environment", json={"imagee": "x"})
        assert_openai_error(unknown_field, 400)
        not_json = client.put("/programs/q/environment", content=b"{nope",
                              headers={"content-type": "application/json"})
        assert_openai_error(not_json, 400)
        missing_cmd = client.put("/programs/q/environment", json={"command": ["no-such-bin-x"]})
        assert assert_openai_error(missing_cmd, 400)["param"] == "command"
        assert_openai_error(client.post("/programs/p/exec", json={"command": []}), 400)
        assert_openai_error(client.post("/programs/p/exec", json={"timeout_s": 3}), 400)
        assert_openai_error(client.post("/programs/p/exec",
                                        json={"command": "true", "timeout_s": -2}), 400)
        not_found = client.post("/programs/p/exec", json={"command": ["no-such-bin-x"]})
        assert not_found.status_code == 200 and not_found.json()["exit_code"] == 127
        assert_openai_error(client.post("/programs/ghost/exec", json={"command": "true"}),
                            404, "environment_not_declared")
        assert_openai_error(client.post("/programs/ghost/tool-intent", json={"tools": []}),
                            404, "environment_not_declared")
        forbidden = client.post("/programs/p/exec", json={"command": "true"},
                                headers={"X-Tenant": "intruder"})
        assert_openai_error(forbidden, 403)
        timed = client.post("/programs/p/exec", json={"command": "sleep 20", "timeout_s": 0.5})
        assert timed.json()["timed_out"] is True and timed.json()["exit_code"] == 124
        removed = client.delete("/programs/p/environment").json()
        assert removed["environments"] == 1
    assert list(app_root.iterdir()) == []


def test_tenants_do_not_share_environments(local_app: RunningServer) -> None:
    with httpx.Client(base_url=local_app.url, timeout=30, trust_env=False) as client:
        client.put("/programs/same/environment", json={"env": {"WHO": "a"}},
                   headers={"X-Tenant": "a"})
        client.put("/programs/same/environment", json={"env": {"WHO": "b"}},
                   headers={"X-Tenant": "b"})
        for tenant in ("a", "b"):
            out = client.post("/programs/same/exec", json={"command": "echo $WHO"},
                              headers={"X-Tenant": tenant}).json()
            assert out["stdout"] == f"{tenant}\n"
        metrics = client.get("/metrics").text
        assert 'thunder_tool_environments{state="ready"} 2.0' in metrics
