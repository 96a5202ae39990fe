"""The manager over a real Docker-API engine (Podman in CI: ``make engine``)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.tools.envtest import TEST_IMAGE, fast_config, running_manager, wait_state
from thunder_middleware.tools import (
    EnvironmentManager,
    EnvState,
    InvalidSpec,
    ProgramReleased,
    UnknownImage,
    default_presets,
    parse_spec,
    resolve_spec,
)

pytestmark = pytest.mark.docker


def containers_of(manager: EnvironmentManager, owner: str) -> list[dict]:
    docker_client = manager.provider.client  # type: ignore[attr-defined]
    return docker_client.api.containers(all=True, filters={"label": f"thunder.owner={owner}"})


async def test_prepare_exec_publish_and_release(docker_manager: EnvironmentManager) -> None:
    spec = resolve_spec({"preset": "busybox-httpd"}, default_presets())
    await docker_manager.declare("t/web", spec)
    await wait_state(docker_manager, "t/web", EnvState.READY)  # prepared ahead, no exec yet
    handle = docker_manager.describe("t/web")[0]
    assert len(containers_of(docker_manager, "t/web")) == 1
    labels = containers_of(docker_manager, "t/web")[0]["Labels"]
    assert labels["thunder.managed"] == "true"
    assert labels["thunder.instance"] == docker_manager.instance_id

    wrote = await docker_manager.exec("t/web", "echo from-agent > /www/agent.txt; echo done",
                                      timeout_s=10)
    assert (wrote.exit_code, wrote.stdout, wrote.waited_for_ready_s < 0.5) == (0, "done\n", True)
    async with httpx.AsyncClient(trust_env=False) as client:
        page = await client.get(f"http://127.0.0.1:{handle.ports[8080]}/agent.txt")
    assert page.text == "from-agent\n"

    missing = await docker_manager.exec("t/web", ["no-such-command"], timeout_s=10)
    assert missing.exit_code == 127
    slow = await docker_manager.exec("t/web", ["sleep", "30"], timeout_s=0.5)
    assert slow.timed_out and slow.exit_code == 124 and slow.duration_s < 10
    big = await docker_manager.exec("t/web", "yes | head -c 300000", timeout_s=10)
    assert big.truncated and len(big.stdout) == docker_manager.config.output_limit

    await docker_manager.exec("t/web", "dd if=/dev/zero of=/tmp/blob bs=1k count=512",
                              timeout_s=10)
    assert await docker_manager.sample_disk() >= 512 * 1024
    assert docker_manager.disk_of_program("t/web") >= 512 * 1024

    report = await docker_manager.reclaim("t/web")
    assert (report.containers, report.ports) == (1, 1)
    assert report.disk_bytes_freed >= 512 * 1024
    assert containers_of(docker_manager, "t/web") == []
    assert docker_manager.ports.in_use == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{handle.ports[8080]}/", timeout=2, trust_env=False)
    with pytest.raises(ProgramReleased):
        await docker_manager.exec("t/web", "true", timeout_s=5)


async def test_volumes_and_limits_are_applied(docker_manager: EnvironmentManager) -> None:
    spec = resolve_spec({"preset": "shell-sandbox", "memory": "64m", "cpus": 0.25},
                        default_presets())
    await docker_manager.declare("t/vol", spec)
    result = await docker_manager.exec("t/vol", "echo kept > /scratch/f; cat /scratch/f; pwd",
                                       timeout_s=10)
    assert result.stdout == "kept\n/work\n"
    container = containers_of(docker_manager, "t/vol")[0]
    details = docker_manager.provider.client.api.inspect_container(container["Id"])  # type: ignore[attr-defined]
    assert details["HostConfig"]["Memory"] == 64 * 1024**2
    assert details["HostConfig"]["NanoCpus"] == 250_000_000
    client = docker_manager.provider.client  # type: ignore[attr-defined]
    volumes = client.api.volumes(filters={"label": "thunder.owner=t/vol"})["Volumes"]
    assert len(volumes) == 1
    report = await docker_manager.reclaim("t/vol")
    assert (report.containers, report.volumes) == (1, 1)
    assert not client.api.volumes(filters={"label": "thunder.owner=t/vol"})["Volumes"]


async def test_idle_timeout_reclaims_container(docker_engine: None) -> None:
    from thunder_middleware.tools.providers.docker import DockerProvider

    async with running_manager(DockerProvider(), fast_config(idle_timeout_s=0.8)) as manager:
        await manager.declare("t/idle", parse_spec({"image": TEST_IMAGE}))
        await wait_state(manager, "t/idle", EnvState.READY)
        assert len(containers_of(manager, "t/idle")) == 1
        await wait_state(manager, "t/idle", EnvState.RECLAIMED)
        assert manager.describe("t/idle")[0].reclaim_reason == "idle"
        assert containers_of(manager, "t/idle") == []


async def test_bad_input_is_4xx_and_leaks_nothing(docker_manager: EnvironmentManager) -> None:
    with pytest.raises(UnknownImage) as unknown:
        await docker_manager.declare("t/bad", parse_spec({"image": "localhost/not-there:1"}))
    assert unknown.value.status_code == 400 and unknown.value.param == "image"
    with pytest.raises(InvalidSpec):
        await docker_manager.declare("t/bad", parse_spec({}))  # no image
    await docker_manager.declare("t/bad", parse_spec({"image": TEST_IMAGE,
                                                      "command": ["no-such-daemon"]}))
    with pytest.raises(InvalidSpec) as bad_command:
        await docker_manager.exec("t/bad", "true", timeout_s=5)
    assert bad_command.value.status_code == 400
    await asyncio.sleep(0.2)
    assert containers_of(docker_manager, "t/bad") == []
    assert docker_manager.ports.in_use == 0


async def test_process_limit_is_applied(docker_manager: EnvironmentManager) -> None:
    """A fork bomb stops at the environment's process limit (the spec's, or the provider's
    default), and setuid programs cannot raise privileges."""
    from thunder_middleware.tools.providers.docker import DEFAULT_PIDS_LIMIT

    await docker_manager.declare("t/pids", parse_spec({"image": TEST_IMAGE, "pids": 40}))
    bomb = await docker_manager.exec(
        "t/pids", "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done; echo all",
        timeout_s=30)
    assert bomb.exit_code != 0 and "can't fork" in bomb.stderr, bomb
    await docker_manager.declare("t/default", parse_spec({"image": TEST_IMAGE}))
    await docker_manager.exec("t/default", "true", timeout_s=30)
    client = docker_manager.provider.client  # type: ignore[attr-defined]
    limits = {}
    for owner in ("t/pids", "t/default"):
        [container] = containers_of(docker_manager, owner)
        host = client.api.inspect_container(container["Id"])["HostConfig"]
        limits[owner] = host["PidsLimit"]
        assert "no-new-privileges" in (host.get("SecurityOpt") or []), host.get("SecurityOpt")
    assert limits == {"t/pids": 40, "t/default": DEFAULT_PIDS_LIMIT}
    for owner in ("t/pids", "t/default"):
        await docker_manager.reclaim(owner)
