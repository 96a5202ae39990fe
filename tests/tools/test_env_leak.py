"""Leak test: many programs with random failures and abandonments leave nothing behind."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.tools.envtest import TEST_IMAGE, fast_config, running_manager
from thunder_middleware.tools import (
    EnvironmentManager,
    LocalProvider,
    ToolEnvironmentError,
    parse_spec,
)
from thunder_middleware.tools.ports import _port_is_free
from thunder_middleware.tools.providers.processes import processes_with

#: The issue asks for 200 programs, with either provider. Containers (Podman) cost about
#: 0.65 s each on a shared 2-core machine (200 took 128 s): the suite's budget affords it.
DOCKER_PROGRAMS = 200

BEHAVIOURS = ["normal", "normal", "bad-readiness", "dies", "timeouts", "abandoned",
              "released-while-preparing", "redeclared"]


def spec_for(behaviour: str, image: str | None) -> dict:
    spec: dict = {"ports": [8000], "volumes": [{"mount": "/data"}]}
    if image:  # containers need a main process; local environments only get stray children
        spec["image"] = image
        spec["command"] = ["sleep", "300"]
    if behaviour == "bad-readiness":
        spec["readiness"] = {"command": ["false"], "timeout_s": 0.3, "interval_s": 0.1}
    elif behaviour == "dies":
        spec["command"] = "sleep 0.2; exit 1"
        spec["readiness"] = {"command": ["sleep", "0.4"], "timeout_s": 5}
    elif behaviour == "released-while-preparing":
        spec["readiness"] = {"command": ["sleep", "0.3"], "timeout_s": 5}
    return spec


async def run_program(manager: EnvironmentManager, key: str, behaviour: str,
                      image: str | None, rng: random.Random) -> None:
    await manager.declare(key, parse_spec(spec_for(behaviour, image)))
    try:
        if behaviour == "released-while-preparing":
            await asyncio.sleep(rng.uniform(0, 0.2))
        elif behaviour == "redeclared":
            await manager.exec(key, "echo one > /tmp/x 2>/dev/null; true", timeout_s=10)
            await manager.declare(key, parse_spec({**spec_for("normal", image), "ports": []}))
            await manager.exec(key, "sleep 300 &", timeout_s=10)
        elif behaviour == "timeouts":
            await manager.exec(key, ["no-such-command-anywhere"], timeout_s=10)
            await manager.exec(key, "sleep 30", timeout_s=0.2)
        else:
            await manager.exec(key, "head -c 20000 /dev/zero > blob; sleep 300 &", timeout_s=10)
    except ToolEnvironmentError:
        pass  # the failures are the point; cleanup must happen regardless
    if behaviour != "abandoned":
        await manager.reclaim(key)


async def run_fleet(manager: EnvironmentManager, programs: int, image: str | None,
                    seed: int) -> None:
    rng = random.Random(seed)
    gate = asyncio.Semaphore(32)

    async def one(index: int) -> None:
        async with gate:
            await run_program(manager, f"leak/{index}", rng.choice(BEHAVIOURS), image, rng)

    await asyncio.gather(*(one(index) for index in range(programs)))
    deadline = time.monotonic() + 60
    while manager.live_programs() and time.monotonic() < deadline:  # abandoned: idle GC
        await asyncio.sleep(0.1)
    assert manager.live_programs() == []


def assert_ports_free(manager: EnvironmentManager) -> None:
    assert manager.ports.in_use == 0
    start, end = manager.config.port_range
    assert all(_port_is_free(port, "127.0.0.1") for port in range(start, end + 1))


async def test_local_fleet_leaks_nothing(local_root: Path) -> None:
    async with running_manager(
        LocalProvider(local_root),
        fast_config(max_live=32, idle_timeout_s=0.5, port_range=(24000, 24199)),
    ) as manager:
        await run_fleet(manager, 200, None, seed=4)
    assert list(local_root.iterdir()) == []
    assert processes_with("THUNDER_INSTANCE", manager.instance_id) == []
    assert_ports_free(manager)
    reclaimed = manager.metrics.registry.get_sample_value(
        "thunder_tool_reclaimed_resources_total", {"kind": "directories", "reason": "idle"})
    assert reclaimed and reclaimed > 0  # abandoned programs were collected by the idle timeout


@pytest.mark.docker
async def test_docker_fleet_leaks_nothing(docker_engine: None) -> None:
    from thunder_middleware.tools.providers.docker import DockerProvider

    provider = DockerProvider()
    async with running_manager(
        provider, fast_config(max_live=8, idle_timeout_s=0.5, port_range=(24200, 24299)),
    ) as manager:
        await run_fleet(manager, DOCKER_PROGRAMS, TEST_IMAGE, seed=5)
    mine = {"label": f"thunder.instance={manager.instance_id}"}
    client = DockerProvider().client
    assert client.api.containers(all=True, filters=mine) == []
    assert client.api.volumes(filters=mine).get("Volumes") in (None, [])
    assert_ports_free(manager)
