"""A state directory that fills up: calls keep flowing, nothing stays in
flight, control writes answer 503, and everything is written once the disk takes writes
again; then a kill -9 and a restart on the same directory find it all, environments declared
with PUT included.

The state directory is a real, small tmpfs mounted for the test (the test runs as root, as
the container engine's tests do); "full" is a filler file written until ENOSPC. (A read-only
remount cannot be tested the same way: the kernel refuses it while the store's files are
open for writing; the guard treats every sqlite3.Error and OSError of a write alike.)
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.sidecar.conftest import STRICT_POLICY, chat_body, metric, wait_until
from thunder_middleware.launch import RunningServer, start_sidecar

FLAGS = [flag for flag in STRICT_POLICY if flag not in ("--env-provider", "none")]
CHAT = "/v1/chat/completions"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "state"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def _degraded(url: str) -> float:
    return metric(url, "thunder_sidecar_store_degraded")


def _assert_nothing_in_flight(url: str) -> None:
    programs = httpx.get(url + "/programs", timeout=10).json()["data"]
    assert not [p["program_id"] for p in programs
                if p["inflight_requests"] or p["waiting_requests"]]
    assert httpx.get(url + "/health", timeout=10).json()["waiting_requests"] == 0


def _calls_flow(client: httpx.Client, names: list[str]) -> None:
    for index, name in enumerate(names):
        response = client.post(CHAT, json=chat_body(name, 20, salt=index,
                                                    stream=index % 2 == 1))
        assert response.status_code == 200, response.text


def _control_writes_refused(client: httpx.Client) -> None:
    for response in (client.post("/programs", json={"program_id": "refused"}),
                     client.post("/programs/release", json={"program_id": "before"}),
                     client.put("/programs/refused-env/environment", json={})):
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "state_unavailable" and "state directory" in error["message"]
        assert response.headers["retry-after"]
    assert client.get("/programs/refused").status_code == 404
    assert client.get("/programs/refused-env").status_code == 404


def test_full_state_dir_degrades_and_recovers(
        fast_twin: RunningServer, small_disk: Path, tmp_path: Path) -> None:
    flags = [*FLAGS, "--state-dir", str(small_disk)]
    env = {"THUNDER_ENV_ROOT": str(tmp_path / "envs")}
    server = start_sidecar([fast_twin.url], extra_args=flags, env=env)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.post("/programs", json={"program_id": "before"}).status_code == 200
            _calls_flow(client, ["before"])

            filler = _fill(small_disk)
            _calls_flow(client, ["full-1", "full-2", "before", "full-3"])
            wait_until(lambda: _degraded(server.url) == 1, what="the store marked degraded")
            _calls_flow(client, ["full-4", "full-5"])  # new programs too, streams too
            _assert_nothing_in_flight(server.url)
            _control_writes_refused(client)
            assert "cannot be written" in server.log_tail(200_000)

            filler.unlink()
            wait_until(lambda: _degraded(server.url) == 0, what="the store to recover")
            assert client.post("/programs", json={"program_id": "after"}).status_code == 200
            declared = client.put("/programs/put-env/environment", json={})
            assert declared.status_code == 200, declared.text
            _calls_flow(client, ["after", "after-2"])
        before = {p["program_id"]: p for p in
                  httpx.get(server.url + "/programs", timeout=10).json()["data"]}
    finally:
        server.kill()  # kill -9: only what reached the store survives

    second = start_sidecar([fast_twin.url], extra_args=flags, env=env)
    try:
        after = {p["program_id"]: p for p in
                 httpx.get(second.url + "/programs", timeout=10).json()["data"]}
        assert set(after) == set(before)
        for name in ("full-1", "full-4", "full-5", "before", "after", "after-2"):
            assert after[name]["summary"] == before[name]["summary"], name
        assert after["before"]["summary"]["steps"] == 2
        timeline = httpx.get(second.url + "/programs/full-4", timeout=10).json()["timeline"]
        assert len(timeline) == 1  # the step held in memory was written on recovery
        # an environment declared with PUT comes back after the restart
        ran = httpx.post(second.url + "/programs/put-env/exec", json={"command": "echo back"},
                         timeout=60)
        assert ran.status_code == 200 and ran.json()["stdout"] == "back\n", ran.text
        assert "Traceback" not in second.log_tail(200_000)
    finally:
        second.stop()
    assert "Traceback" not in server.log_tail(500_000)


def test_put_declared_environment_survives_kill_9(fast_twin: RunningServer,
                                                  tmp_path: Path) -> None:
    flags = [*FLAGS, "--state-dir", str(tmp_path / "state")]
    env = {"THUNDER_ENV_ROOT": str(tmp_path / "envs")}
    first = start_sidecar([fast_twin.url], extra_args=flags, env=env)
    try:
        declared = httpx.put(first.url + "/programs/declared/environment",
                             json={"env": {"GREETING": "hello"}}, timeout=30)
        assert declared.status_code == 200, declared.text
    finally:
        first.kill()
    second = start_sidecar([fast_twin.url], extra_args=flags, env=env)
    try:
        ran = httpx.post(second.url + "/programs/declared/exec",
                         json={"command": "echo $GREETING"}, timeout=60)
        assert ran.status_code == 200 and ran.json()["stdout"] == "hello\n", ran.text
    finally:
        second.stop()
