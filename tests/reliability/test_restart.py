"""Sidecar restarts: kill -9 and start again on the same state dir; SIGTERM drains.

After a crash, the new sidecar knows every program again (live ones live, with their
timeline totals and steps, released ones as terminated), reaps the dead sidecar's environments by
label (zero orphans left) and recreates a restored program's declared environment on its
next exec. A graceful stop lets an in-flight call finish before the process exits.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.sidecar.conftest import STRICT_POLICY, chat_body, sidecar, twin, wait_until
from thunder_middleware.launch import RunningServer, start_sidecar

FLAGS = [flag for flag in STRICT_POLICY if flag not in ("--env-provider", "none")]


def _programs(url: str) -> dict[str, dict[str, object]]:
    return {p["program_id"]: p for p in httpx.get(url + "/programs", timeout=10).json()["data"]}


def _env_dirs(root: Path) -> list[Path]:
    return [entry for entry in root.iterdir() if entry.is_dir()] if root.exists() else []


def test_killed_sidecar_restarts_with_its_programs(fast_twin: RunningServer,
                                                   tmp_path: Path) -> None:
    state, envs = tmp_path / "state", tmp_path / "envs"
    flags = [*FLAGS, "--state-dir", str(state)]
    env = {"THUNDER_ENV_ROOT": str(envs)}
    first = start_sidecar([fast_twin.url], extra_args=flags, env=env)
    try:
        with httpx.Client(base_url=first.url, timeout=30) as client:
            for index in range(4):
                for step in range(index + 1):
                    assert client.post("/v1/chat/completions", json=chat_body(
                        f"keep-{index}", 30 + 10 * step, salt=index)).status_code == 200
            assert client.post("/programs/release", json={"program_id": "keep-3"}
                               ).status_code == 200
            assert client.post("/programs", json={"program_id": "with-env", "environment": {
                "command": ["sleep", "600"]}}).status_code == 200
            ran = client.post("/programs/with-env/exec", json={"command": "echo before"})
            assert ran.status_code == 200 and "before" in ran.json()["stdout"]
        before = _programs(first.url)
        steps_before = httpx.get(first.url + "/programs/keep-2", timeout=10).json()["timeline"]
        assert len(steps_before) == 3
        assert len(_env_dirs(envs)) == 1
    finally:
        first.kill()  # kill -9: no shutdown hook runs, the environment is orphaned

    assert len(_env_dirs(envs)) == 1  # the orphan is still there
    second = start_sidecar([fast_twin.url], extra_args=flags, env=env)
    try:
        after = _programs(second.url)
        assert set(after) == set(before)
        for name in ("keep-0", "keep-1", "keep-2", "with-env"):
            assert after[name]["status"] != "terminated", after[name]
            assert after[name]["summary"] == before[name]["summary"]
        assert after["keep-2"]["summary"]["steps"] == 3  # type: ignore[index]
        assert after["keep-3"]["status"] == "terminated"
        assert after["keep-3"]["terminated_reason"] == "released"
        # the per-step timeline came back too, step for step
        steps_after = httpx.get(second.url + "/programs/keep-2", timeout=10).json()["timeline"]
        assert steps_after == steps_before
        # the orphaned environment was reaped by label at start-up
        wait_until(lambda: not _env_dirs(envs), timeout=20, what="orphan environment reaped")
        with httpx.Client(base_url=second.url, timeout=30) as client:
            ran = client.post("/programs/with-env/exec", json={"command": "echo after"})
            assert ran.status_code == 200 and "after" in ran.json()["stdout"]
            assert client.post("/v1/chat/completions", json=chat_body("keep-2", 70, salt=2)
                               ).status_code == 200
            again = client.get("/programs/keep-2").json()
            assert again["summary"]["steps"] == 4
            assert [step["index"] for step in again["timeline"]] == [0, 1, 2, 3]
            assert again["timeline"][3]["acting_s"] is not None  # measured from step 2's end
            for name in ("keep-0", "keep-1", "keep-2", "with-env"):
                assert client.post("/programs/release", json={"program_id": name}
                                   ).status_code == 200
        wait_until(lambda: not _env_dirs(envs), timeout=20, what="environment reclaimed")
    finally:
        second.stop()


def test_sigterm_drains_in_flight_requests() -> None:
    with twin(time_scale=1.0) as slow, sidecar([slow.url], *STRICT_POLICY) as server:
        results: dict[str, object] = {}

        def call() -> None:
            try:
                response = httpx.post(server.url + "/v1/chat/completions",
                                      json=chat_body("draining", 20, max_tokens=400),
                                      timeout=60)
                results["status"] = response.status_code
                results["tokens"] = response.json()["usage"]["completion_tokens"]
            except Exception as exc:  # the assertion below reports it
                results["error"] = repr(exc)

        caller = threading.Thread(target=call)
        caller.start()
        wait_until(lambda: httpx.get(server.url + "/programs/draining", timeout=5
                                     ).status_code == 200, what="the call in flight")
        time.sleep(0.3)
        started = time.monotonic()
        server.stop(timeout=30)  # SIGTERM
        caller.join(60)
        assert results.get("status") == 200, results
        assert results["tokens"] == 400
        assert server.process.returncode in (0, -15)  # uvicorn re-raises SIGTERM after draining
        assert time.monotonic() - started < 30
