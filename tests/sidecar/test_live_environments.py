"""Tool environments through the sidecar (local provider): prepared at registration, used,
timed on the timeline, reclaimed on release and on idle expiry."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.sidecar.conftest import STRICT_POLICY, chat_body, program, sidecar, wait_until
from thunder_middleware.launch import RunningServer

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
