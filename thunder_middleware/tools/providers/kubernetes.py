"""Kubernetes provider: one labelled pod per environment, for fleets that outgrow one host.

Pods carry the same labels as containers (values made label-safe; the exact owner and instance
are kept in annotations), ``emptyDir`` volumes that die with the pod, CPU and memory as
requests = limits, and no service-account token. Ports are not mapped: each pod has its own IP,
so the handle's endpoints are ``<pod IP>:<port>``, reachable inside the cluster. Commands run
through the exec stream API. Disk use comes from the kubelet's ``stats/summary``.

Tested against the client's API objects with a recorded fake of the ``CoreV1Api`` calls
(``tests/tools/test_env_kubernetes.py``): no cluster is available in CI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from thunder_middleware.tools import labels
from thunder_middleware.tools.errors import (
    EnvironmentGone,
    InvalidSpec,
    PreparationFailed,
    ProviderError,
    ToolEnvironmentError,
    TransientProviderError,
    UnknownImage,
)
from thunder_middleware.tools.handles import ExecResult, ReclaimedCounts
from thunder_middleware.tools.providers.base import (
    EXIT_TIMED_OUT,
    KEEPALIVE,
    CommandOutput,
    EnvironmentProvider,
    ExecCommand,
    Instance,
    Placement,
)
from thunder_middleware.tools.providers.threads import BlockingCalls
from thunder_middleware.tools.specs import EnvSpec

IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
SPEC_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
ANNOTATION_OWNER = "thunder.io/owner"
ANNOTATION_INSTANCE = "thunder.io/instance"


def map_api_error(exc: Exception, what: str) -> ToolEnvironmentError:
    if isinstance(exc, ToolEnvironmentError):
        return exc
    status = getattr(exc, "status", None)
    if status is not None:  # kubernetes.client.exceptions.ApiException
        reason = getattr(exc, "reason", "") or str(exc)
        if status == 0 or status == 429 or status >= 500:
            return TransientProviderError(f"{what}: API server error {status}: {reason}")
        if status == 404:
            return EnvironmentGone(f"{what}: {reason}")
        if status in (400, 422):
            return InvalidSpec(f"{what}: {reason}")
        return ProviderError(f"{what}: API error {status}: {reason}")
    if type(exc).__module__.startswith("urllib3"):
        return TransientProviderError(f"{what}: cannot reach the API server: {exc}")
    return ProviderError(f"{what}: {type(exc).__name__}: {exc}")


def pod_manifest(placement: Placement, namespace: str) -> Any:
    """The ``V1Pod`` for one environment."""
    from kubernetes import client as k8s

    spec = placement.spec
    resources = {}
    if spec.cpus:
        resources["cpu"] = f"{int(spec.cpus * 1000)}m"
    if spec.memory:
        resources["memory"] = str(spec.memory)
    volumes = [(f"vol-{index}", volume.mount) for index, volume in enumerate(spec.volumes)]
    container = k8s.V1Container(
        name="env",
        image=spec.image,
        command=spec.command_argv() or KEEPALIVE,
        env=[k8s.V1EnvVar(name=key, value=value) for key, value in spec.env.items()],
        working_dir=spec.workdir,
        ports=[k8s.V1ContainerPort(container_port=port) for port in spec.ports],
        resources=k8s.V1ResourceRequirements(limits=resources or None,
                                             requests=resources or None),
        volume_mounts=[k8s.V1VolumeMount(name=name, mount_path=mount) for name, mount in volumes],
    )
    return k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name=f"thunder-{placement.env_id}",
            namespace=namespace,
            labels={key: labels.kubernetes_label_value(value)
                    for key, value in placement.labels.items()},
            annotations={ANNOTATION_OWNER: placement.owner,
                         ANNOTATION_INSTANCE: placement.instance_id},
        ),
        spec=k8s.V1PodSpec(
            containers=[container],
            restart_policy="Never",
            automount_service_account_token=False,
            termination_grace_period_seconds=0,
            volumes=[k8s.V1Volume(name=name, empty_dir=k8s.V1EmptyDirVolumeSource())
                     for name, _ in volumes],
        ),
    )


def _waiting_reason(pod: Any) -> tuple[str | None, str]:
    for status in (pod.status.container_statuses or []) if pod.status else []:
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason:
            return waiting.reason, waiting.message or waiting.reason
    return None, ""


class KubernetesProvider(EnvironmentProvider):
    name = "kubernetes"
    lends_host_ports = False

    def __init__(
        self,
        namespace: str = "default",
        *,
        api: Any = None,
        stream: Callable[..., Any] | None = None,
        start_timeout_s: float = 300.0,
        poll_interval_s: float = 1.0,
        reap_foreign_instances: bool = False,
        max_threads: int = 32,
    ) -> None:
        if api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.CoreV1Api()
        if stream is None:
            from kubernetes.stream import stream as kubernetes_stream

            stream = kubernetes_stream
        self.api = api
        self.stream = stream
        self.namespace = namespace
        self.start_timeout_s = start_timeout_s
        self.poll_interval_s = poll_interval_s
        # Sidecars on Kubernetes change host names on restart, so "is its maker dead" cannot be
        # told from the instance id; a single-sidecar deployment sets this to reap all others.
        self.reap_foreign_instances = reap_foreign_instances
        self._calls = BlockingCalls(max_threads, "kubernetes", map_api_error)

    async def validate(self, spec: EnvSpec) -> None:
        if not spec.image:
            raise InvalidSpec("the kubernetes provider needs an image", param="image")

    async def create(self, placement: Placement) -> Instance:
        return await self._calls.run(f"creating {placement.env_id}", self._create_sync, placement)

    def _create_sync(self, placement: Placement) -> Instance:
        body = pod_manifest(placement, self.namespace)
        name = body.metadata.name
        self.api.create_namespaced_pod(self.namespace, body)
        try:
            pod = self._wait_running(name)
        except Exception:
            self._delete_sync(name)
            raise
        return Instance(
            env_id=placement.env_id, owner=placement.owner, ref=name,
            host=pod.status.pod_ip or "",
            data={"node": pod.spec.node_name, "volumes": len(placement.spec.volumes)},
        )

    def _wait_running(self, name: str) -> Any:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            pod = self.api.read_namespaced_pod(name, self.namespace)
            phase = pod.status.phase if pod.status else None
            if phase == "Running":
                return pod
            reason, message = _waiting_reason(pod)
            if reason in IMAGE_ERRORS:
                raise UnknownImage(f"pod {name}: {reason}: {message}", param="image")
            if reason in SPEC_ERRORS:
                raise InvalidSpec(f"pod {name}: {reason}: {message}", param="command")
            if phase in ("Failed", "Succeeded"):
                raise PreparationFailed(f"pod {name} ended during start-up ({phase})")
            if time.monotonic() >= deadline:
                raise PreparationFailed(f"pod {name} not running after {self.start_timeout_s} s")
            time.sleep(self.poll_interval_s)

    async def is_running(self, instance: Instance) -> bool:
        try:
            pod = await self._calls.run("reading pod", self.api.read_namespaced_pod,
                                        instance.ref, self.namespace)
        except EnvironmentGone:
            return False
        return bool(pod.status and pod.status.phase == "Running")

    async def run_command(self, instance: Instance, command: ExecCommand) -> ExecResult:
        argv = list(command.argv)
        if command.env:
            argv = ["env", *(f"{key}={value}" for key, value in command.env.items()), *argv]
        if command.workdir:
            argv = ["sh", "-c", 'cd "$0" && exec "$@"', command.workdir, *argv]
        return await self._calls.run("exec", self._exec_sync, instance.ref, argv,
                                     command.timeout_s, command.output_limit)

    def _exec_sync(self, name: str, command: list[str], timeout_s: float,
                   output_limit: int) -> ExecResult:
        output = CommandOutput(output_limit)
        session = self.stream(
            self.api.connect_get_namespaced_pod_exec, name, self.namespace, command=command,
            stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False,
        )

        def collect() -> None:
            if session.peek_stdout():
                output.stdout.feed(session.read_stdout().encode())
            if session.peek_stderr():
                output.stderr.feed(session.read_stderr().encode())

        timed_out = False
        while session.is_open():
            remaining = timeout_s - (time.monotonic() - output.started)
            if remaining <= 0:
                timed_out = True  # the process may linger in the pod until it is reclaimed
                session.close()
                break
            session.update(timeout=min(remaining, 0.5))
            collect()
        collect()
        exit_code = EXIT_TIMED_OUT if timed_out else int(session.returncode or 0)
        return output.result(exit_code, timed_out=timed_out)

    def _delete_sync(self, name: str) -> bool:
        try:
            self.api.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return False
            raise
        return True

    async def destroy(self, instance: Instance) -> ReclaimedCounts:
        deleted = await self._calls.run("deleting pod", self._delete_sync, instance.ref)
        return ReclaimedCounts(pods=int(deleted),
                               volumes=instance.data.get("volumes", 0) if deleted else 0)

    async def disk_usage(self, instances: list[Instance]) -> dict[str, int]:
        def measure() -> dict[str, int]:
            by_pod = {item.ref: item.env_id for item in instances}
            usage = dict.fromkeys(by_pod.values(), 0)
            for node in {item.data.get("node") for item in instances} - {None}:
                raw = self.api.connect_get_node_proxy_with_path(node, "stats/summary")
                summary = json.loads(raw) if isinstance(raw, str | bytes) else raw
                for pod in summary.get("pods", []):
                    env_id = by_pod.get(pod.get("podRef", {}).get("name"))
                    if env_id is not None:
                        usage[env_id] = int(pod.get("ephemeral-storage", {}).get("usedBytes", 0))
            return usage

        return await self._calls.run("disk usage", measure)

    def _owned_pods(self, owner: str | None = None) -> list[Any]:
        selector = f"{labels.MANAGED}=true"
        if owner is not None:
            selector += f",{labels.OWNER}={labels.kubernetes_label_value(owner)}"
        return list(self.api.list_namespaced_pod(self.namespace, label_selector=selector).items)

    async def reap(self, own_instance_id: str) -> ReclaimedCounts:
        def sweep() -> ReclaimedCounts:
            removed = ReclaimedCounts()
            for pod in self._owned_pods():
                instance = (pod.metadata.annotations or {}).get(ANNOTATION_INSTANCE, "")
                if instance == own_instance_id:
                    continue
                if self.reap_foreign_instances or labels.instance_is_dead(instance):
                    removed.pods += int(self._delete_sync(pod.metadata.name))
            return removed

        return await self._calls.run("reaping orphans", sweep)

    async def count_owned(self, owner: str | None = None) -> int:
        return len(await self._calls.run("listing pods", self._owned_pods, owner))

    async def close(self) -> None:
        self._calls.shutdown()
