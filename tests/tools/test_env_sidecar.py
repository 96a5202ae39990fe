"""Environments through the real sidecar (``thunder-middleware serve --env-provider docker``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from thunder_middleware.launch import RunningServer, start_sidecar

pytestmark = pytest.mark.docker


@pytest.fixture
def docker_sidecar(docker_engine: None, twin_server: RunningServer) -> Iterator[RunningServer]:
    server = start_sidecar([twin_server.url], extra_args=["--env-provider", "docker"])
    try:
        yield server
    finally:
        server.stop()


def containers_of_env(env_id: str) -> list[dict]:
    import docker

    client = docker.from_env()
    try:
        return client.api.containers(all=True, filters={"label": f"thunder.env={env_id}"})
    finally:
        client.close()


def test_register_exec_publish_release(docker_sidecar: RunningServer) -> None:
    program = f"sc-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=docker_sidecar.url, timeout=60, trust_env=False) as client:
        registered = client.post("/programs", json={"program_id": program,
                                                    "preset": "busybox-httpd"})
        assert registered.status_code == 200, registered.text
        ran = client.post(f"/programs/{program}/exec",
                          json={"command": "echo via-sidecar > /www/s.txt; echo ok"})
        assert ran.status_code == 200 and ran.json()["stdout"] == "ok\n", ran.text
        [handle] = client.get(f"/programs/{program}").json()["environments"]
        assert handle["state"] == "ready" and handle["provider"] == "docker"
        page = httpx.get(f"http://{handle['endpoints']['8080']}/s.txt", trust_env=False)
        assert page.text == "via-sidecar\n"
        assert len(containers_of_env(handle["env_id"])) == 1

        unknown = client.put(f"/programs/{program}-x/environment",
                             json={"image": "localhost/not-there:1"})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_image"

        assert client.post("/programs/release", json={"program_id": program}).status_code == 200
        deadline = time.monotonic() + 30
        while containers_of_env(handle["env_id"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert containers_of_env(handle["env_id"]) == []
        after = client.post(f"/programs/{program}/exec", json={"command": "true"})
        assert after.status_code in (404, 409) and after.json()["error"]["message"]
        metrics = client.get("/metrics").text
        assert "thunder_tool_env_preparation_seconds_count" in metrics
