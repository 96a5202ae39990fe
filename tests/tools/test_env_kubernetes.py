"""The Kubernetes provider against the client's API objects and a recorded fake CoreV1Api."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator

import pytest

from tests.tools.envtest import fast_config, running_manager, wait_state
from tests.tools.k8s_fake import RecordedCoreV1Api, RecordedStream
from thunder_middleware.tools import (
    EnvironmentManager,
    EnvState,
    InvalidSpec,
    UnknownImage,
    parse_spec,
)
from thunder_middleware.tools.labels import kubernetes_label_value
from thunder_middleware.tools.providers.kubernetes import KubernetesProvider

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SPEC = {"image": "python:3.12-slim", "ports": [8080], "cpus": 0.5, "memory": "256m",
        "env": {"MODE": "test"}, "workdir": "/work", "volumes": [{"mount": "/data"}]}


def provider_with(api: RecordedCoreV1Api, **options: object) -> KubernetesProvider:
    return KubernetesProvider(api=api, stream=RecordedStream(), poll_interval_s=0.01,
                              **options)  # type: ignore[arg-type]


@pytest.fixture
async def k8s() -> AsyncIterator[tuple[EnvironmentManager, RecordedCoreV1Api]]:
    api = RecordedCoreV1Api()
    async with running_manager(provider_with(api), fast_config()) as manager:
        yield manager, api


async def test_pod_manifest_labels_and_limits(k8s: tuple[EnvironmentManager, RecordedCoreV1Api]
                                              ) -> None:
    manager, api = k8s
    await manager.declare("tenant-a/agent:7", parse_spec(SPEC))
    await wait_state(manager, "tenant-a/agent:7", EnvState.READY)
    [manifest] = api.manifests.values()
    meta, spec = manifest["metadata"], manifest["spec"]
    assert all(LABEL_VALUE.match(value) and len(value) <= 63 for value in meta["labels"].values())
    assert meta["labels"]["thunder.managed"] == "true"
    assert meta["annotations"]["thunder.io/owner"] == "tenant-a/agent:7"
    assert meta["annotations"]["thunder.io/instance"] == manager.instance_id
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    container = spec["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": str(256 * 1024**2)}
    assert container["ports"] == [{"containerPort": 8080}]
    assert container["env"] == [{"name": "MODE", "value": "test"}]
    assert spec["volumes"] == [{"name": "vol-0", "emptyDir": {}}]
    assert container["volumeMounts"] == [{"name": "vol-0", "mountPath": "/data"}]
    handle = manager.describe("tenant-a/agent:7")[0]
    assert handle.endpoints == {8080: "10.1.0.1:8080"}  # pod IP, no host port lent
    assert manager.ports.in_use == 0


async def test_exec_reclaim_and_disk(k8s: tuple[EnvironmentManager, RecordedCoreV1Api]) -> None:
    manager, api = k8s
    await manager.declare("t/exec", parse_spec({"image": "busybox"}))
    result = await manager.exec("t/exec", "echo out; echo err >&2; exit 4", timeout_s=10)
    assert (result.exit_code, result.stdout, result.stderr) == (4, "out\n", "err\n")
    slow = await manager.exec("t/exec", ["sleep", "20"], timeout_s=0.3)
    assert slow.timed_out and slow.exit_code == 124
    stream = manager.provider.stream  # type: ignore[attr-defined]
    await manager.exec("t/exec", ["true"], timeout_s=5, workdir="/tmp", env={"A": "1"})
    assert stream.commands[-1] == ["sh", "-c", 'cd "$0" && exec "$@"', "/tmp", "env", "A=1",
                                   "true"]
    assert await manager.sample_disk() == 4096
    assert await manager.provider.count_owned("t/exec") == 1
    report = await manager.reclaim("t/exec")
    assert report.pods == 1 and api.pods == {}
    assert ("delete_namespaced_pod", "thunder-" + manager.describe("t/exec")[0].env_id) in api.calls


async def test_unknown_image_and_missing_image(k8s: tuple[EnvironmentManager, RecordedCoreV1Api]
                                               ) -> None:
    manager, api = k8s
    with pytest.raises(InvalidSpec):
        await manager.declare("t/none", parse_spec({}))
    await manager.declare("t/missing", parse_spec({"image": "missing/nothing:1"}))
    with pytest.raises(UnknownImage) as failure:
        await manager.exec("t/missing", "true", timeout_s=5)
    assert failure.value.status_code == 400
    assert api.pods == {}  # the pod that could not pull was deleted


async def test_transient_api_errors_are_retried() -> None:
    api = RecordedCoreV1Api(fail_creates=2)
    async with running_manager(provider_with(api), fast_config()) as manager:
        await manager.declare("t/retry", parse_spec({"image": "busybox"}))
        assert (await manager.exec("t/retry", "echo ok", timeout_s=5)).stdout == "ok\n"
        assert [call for call, _ in api.calls].count("create_namespaced_pod") == 3
    assert api.pods == {}


async def test_reap_dead_instances_only() -> None:
    api = RecordedCoreV1Api(reads_until_running=1)
    dead = f"{socket.gethostname()}:999999:1"  # this host, no such process
    crashed = EnvironmentManager(provider_with(api), fast_config(), instance_id=dead)
    remote = EnvironmentManager(provider_with(api), fast_config(), instance_id="elsewhere:1:1")
    for manager, key in ((crashed, "t/orphan"), (remote, "t/remote")):
        await manager.declare(key, parse_spec({"image": "busybox"}))
        await wait_state(manager, key, EnvState.READY)
    fresh = EnvironmentManager(provider_with(api), fast_config())
    assert (await fresh.start()).pods == 1
    assert await fresh.provider.count_owned("t/orphan") == 0
    assert await fresh.provider.count_owned("t/remote") == 1  # cannot tell: left alone
    await fresh.close()
    # A single-sidecar deployment reaps every other instance (host names change on restart).
    sweeper = EnvironmentManager(provider_with(api, reap_foreign_instances=True), fast_config())
    assert (await sweeper.start()).pods == 1
    await sweeper.close()
    assert api.pods == {}
    for manager in (crashed, remote):
        manager.config.reclaim_on_close = False
        await manager.close()


def test_label_values_are_kubernetes_safe() -> None:
    for value in ["default/p1", "a" * 80, "x:y:z", "ok-value", "/leading", "ü-unicode"]:
        safe = kubernetes_label_value(value)
        assert LABEL_VALUE.match(safe) and len(safe) <= 63
    assert kubernetes_label_value("ok-value") == "ok-value"
    assert kubernetes_label_value("t/a") != kubernetes_label_value("t_a")
