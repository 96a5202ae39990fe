"""Reaping after a sidecar crash: kill -9 a manager, start a new one, nothing is left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.envtest import fast_config
from thunder_middleware.tools import EnvironmentManager, LocalProvider
from thunder_middleware.tools.providers.processes import processes_with

WORKER = Path(__file__).with_name("crash_worker.py")


def run_and_crash(*args: str) -> str:
    """Start the worker, wait for its environments, SIGKILL it; return its instance id."""
    worker = subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        assert line.startswith("READY"), f"worker failed: {line}{worker.stderr.read()}"  # type: ignore[union-attr]
    finally:
        worker.kill()  # SIGKILL: no shutdown hook runs
        worker.wait()
    return line.split()[1]


async def test_local_orphans_are_reaped(local_root: Path) -> None:
    instance = run_and_crash("local", "crash/local-", "3", str(local_root))
    assert len(list(local_root.iterdir())) == 3
    assert len(processes_with("THUNDER_INSTANCE", instance)) >= 6  # 3 mains + 3 stray children
    manager = EnvironmentManager(LocalProvider(local_root), fast_config())
    reaped = await manager.start()
    try:
        assert reaped.directories == 3 and reaped.processes >= 6
        assert processes_with("THUNDER_INSTANCE", instance) == []
        assert list(local_root.iterdir()) == []
    finally:
        await manager.close()


async def test_live_neighbours_are_not_reaped(local_root: Path, local_manager: EnvironmentManager,
                                              tmp_path: Path) -> None:
    from thunder_middleware.tools import parse_spec

    await local_manager.declare("t/neighbour", parse_spec({"command": ["sleep", "300"]}))
    await local_manager.exec("t/neighbour", "true", timeout_s=10)
    other = EnvironmentManager(LocalProvider(local_root), fast_config(), instance_id="vm:1:1")
    reaped = await other.start()
    await other.close()
    assert reaped.directories == 0 and reaped.processes == 0
    assert (await local_manager.exec("t/neighbour", "echo alive", timeout_s=10)).stdout == "alive\n"


@pytest.mark.docker
async def test_docker_orphans_are_reaped(docker_engine: None) -> None:
    from thunder_middleware.tools.providers.docker import DockerProvider

    instance = run_and_crash("docker", "crash/docker-", "3")
    provider = DockerProvider()
    owned = provider.client.api.containers(
        all=True, filters={"label": f"thunder.instance={instance}"})
    assert len(owned) == 3
    manager = EnvironmentManager(provider, fast_config())
    reaped = await manager.start()
    try:
        assert (reaped.containers, reaped.volumes) == (3, 3)
        for index in range(3):
            assert await provider.count_owned(f"crash/docker-{index}") == 0
        assert provider.client.api.volumes(
            filters={"label": f"thunder.instance={instance}"})["Volumes"] in (None, [])
    finally:
        await manager.close()
