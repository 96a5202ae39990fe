"""Docker provider: one labelled container (plus labelled volumes) per environment.

Speaks the Docker Engine API through the ``docker`` SDK, so it runs unchanged against Docker or
Podman's compatible service (``scripts/container-engine.sh``). The SDK blocks, so every call runs
on a private thread pool (``BlockingCalls``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from thunder_middleware.tools import labels
from thunder_middleware.tools.disk import directory_usage
from thunder_middleware.tools.errors import (
    EnvironmentGone,
    InvalidSpec,
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
from thunder_middleware.tools.providers.processes import kill_tree
from thunder_middleware.tools.providers.threads import BlockingCalls
from thunder_middleware.tools.specs import EnvSpec

#: processes an environment may hold at once when its spec names no limit
DEFAULT_PIDS_LIMIT = 1024
_SPEC_ERRORS = ("executable file not found", "no such file or directory", "invalid")


def map_engine_error(exc: Exception, what: str) -> ToolEnvironmentError:
    """Engine errors as our errors: spec problems are 4xx, engine trouble is retried."""
    if isinstance(exc, ToolEnvironmentError):
        return exc
    if isinstance(exc, docker.errors.ImageNotFound):
        return UnknownImage(f"{what}: image not found: {exc.explanation or exc}", param="image")
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 500
        explanation = str(exc.explanation or exc)
        if status == 404:
            return EnvironmentGone(f"{what}: {explanation}")
        if status >= 500 and any(marker in explanation.lower() for marker in _SPEC_ERRORS):
            return InvalidSpec(f"{what}: {explanation}", param="command")
        if status >= 500:
            return TransientProviderError(f"{what}: engine error {status}: {explanation}")
        if status == 409:
            return EnvironmentGone(f"{what}: {explanation}")
        return InvalidSpec(f"{what}: {explanation}")
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return TransientProviderError(f"{what}: cannot reach the container engine: {exc}")
    if isinstance(exc, docker.errors.DockerException):
        return ProviderError(f"{what}: {exc}")
    return ProviderError(f"{what}: {type(exc).__name__}: {exc}")


class DockerProvider(EnvironmentProvider):
    name = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        pull_missing: bool = False,
        publish_host: str = "127.0.0.1",
        max_threads: int = 64,
        client: docker.DockerClient | None = None,
    ) -> None:
        if client is None:
            options: dict[str, Any] = {"max_pool_size": max_threads, "timeout": 120}
            client = (docker.DockerClient(base_url=base_url, **options) if base_url
                      else docker.from_env(**options))
        self.client = client
        self.pull_missing = pull_missing
        self.publish_host = publish_host
        self._calls = BlockingCalls(max_threads, "docker", map_engine_error)
        self._run = self._calls.run

    # ------------------------------------------------------------------ create
    async def validate(self, spec: EnvSpec) -> None:
        if not spec.image:
            raise InvalidSpec("the docker provider needs an image", param="image")
        await self._run(f"image {spec.image!r}", self._ensure_image, spec.image)

    def _ensure_image(self, image: str) -> None:
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            if not self.pull_missing:
                raise
            try:
                self.client.images.pull(image)
            except docker.errors.APIError as exc:
                raise UnknownImage(f"image {image!r} not found and cannot be pulled: "
                                   f"{exc.explanation or exc}", param="image") from exc

    async def create(self, placement: Placement) -> Instance:
        return await self._run(f"creating {placement.env_id}", self._create_sync, placement)

    def _create_sync(self, placement: Placement) -> Instance:
        spec = placement.spec
        name = f"thunder-{placement.env_id}"
        volumes: dict[str, str] = {}  # volume name -> host mount point
        try:
            binds = {}
            for index, volume in enumerate(spec.volumes):
                volume_name = f"{name}-{volume.name or index}"
                created = self.client.volumes.create(name=volume_name, labels=placement.labels)
                volumes[volume_name] = str(created.attrs.get("Mountpoint", ""))
                binds[volume_name] = {"bind": volume.mount, "mode": "rw"}
            container = self.client.containers.run(
                spec.image,
                command=spec.command_argv() or KEEPALIVE,
                name=name,
                detach=True,
                labels=placement.labels,
                environment=spec.env,
                working_dir=spec.workdir,
                ports={f"{port}/tcp": (self.publish_host, host)
                       for port, host in placement.host_ports.items()},
                volumes=binds,
                mem_limit=spec.memory,
                nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
                # a fork bomb in one environment must not exhaust the host's process table
                pids_limit=spec.pids or DEFAULT_PIDS_LIMIT,
                # setuid binaries in the image cannot raise privileges
                security_opt=["no-new-privileges"],
            )
            upper = container.attrs.get("GraphDriver", {}).get("Data", {}).get("UpperDir")
        except Exception:
            self._remove_sync(name, list(volumes))
            raise
        return Instance(
            env_id=placement.env_id, owner=placement.owner, ref=str(container.id),
            host=self.publish_host,
            data={"volumes": volumes, "name": name, "upper_dir": upper},
        )

    async def is_running(self, instance: Instance) -> bool:
        try:
            state = await self._run("inspect", self.client.api.inspect_container, instance.ref)
        except EnvironmentGone:
            return False
        return bool(state["State"].get("Running"))

    # ------------------------------------------------------------------ exec
    async def run_command(self, instance: Instance, command: ExecCommand) -> ExecResult:
        output = CommandOutput(command.output_limit)
        api = self.client.api
        exec_id = (await self._run("exec", api.exec_create, instance.ref, command.argv,
                                   workdir=command.workdir, environment=command.env,
                                   stdout=True, stderr=True))["Id"]

        def pump() -> None:
            for out_chunk, err_chunk in api.exec_start(exec_id, stream=True, demux=True):
                output.stdout.feed(out_chunk)
                output.stderr.feed(err_chunk)

        loop = asyncio.get_running_loop()
        reading = loop.run_in_executor(self._calls.executor, pump)
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(reading), command.timeout_s)
        except TimeoutError:
            timed_out = True
            await self._run("exec kill", self._kill_exec, exec_id)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reading, 5.0)
        except Exception as exc:
            raise map_engine_error(exc, "exec") from exc
        details = await self._run("exec inspect", api.exec_inspect, exec_id)
        exit_code = details.get("ExitCode")
        return output.result(
            EXIT_TIMED_OUT if timed_out or exit_code is None else int(exit_code),
            timed_out=timed_out,
        )

    def _kill_exec(self, exec_id: str) -> None:
        """Kill a timed-out exec by its host pid (same host: Podman/Docker report it)."""
        pid = int(self.client.api.exec_inspect(exec_id).get("Pid") or 0)
        if pid > 0:
            kill_tree(pid)

    # ------------------------------------------------------------------ teardown
    def _remove_sync(self, container: str | None, volumes: list[str]) -> ReclaimedCounts:
        removed = ReclaimedCounts()
        if container:
            try:
                self.client.api.remove_container(container, force=True, v=True)
                removed.containers = 1
            except docker.errors.NotFound:
                pass
        for volume in volumes:
            try:
                self.client.api.remove_volume(volume, force=True)
                removed.volumes += 1
            except docker.errors.NotFound:
                pass
        return removed

    async def destroy(self, instance: Instance) -> ReclaimedCounts:
        return await self._run(f"removing {instance.env_id}", self._remove_sync, instance.ref,
                               list(instance.data.get("volumes", {})))

    async def disk_usage(self, instances: list[Instance]) -> dict[str, int]:
        """The container's writable layer plus its volumes.

        On the engine's host (the usual case) both are directories we can walk, which is cheap;
        asking the engine for ``SizeRw`` makes it diff every container's layer (seconds with
        dozens of containers), so that is only the fallback for a remote engine.
        """
        if not instances:
            return {}

        def measure() -> dict[str, int]:
            usage = dict.fromkeys((item.env_id for item in instances), 0)
            remote: set[str] = set()
            for item in instances:
                upper = item.data.get("upper_dir")
                if upper and Path(upper).is_dir():
                    usage[item.env_id] += directory_usage(upper)
                else:
                    remote.add(item.env_id)
                for mountpoint in item.data.get("volumes", {}).values():
                    if mountpoint and Path(mountpoint).is_dir():
                        usage[item.env_id] += directory_usage(mountpoint)
            if remote:
                listed = self.client.api.containers(
                    all=True, size=True, filters={"label": f"{labels.MANAGED}=true"})
                for entry in listed:
                    env_id = (entry.get("Labels") or {}).get(labels.ENV_ID)
                    if env_id in remote:
                        usage[env_id] += int(entry.get("SizeRw") or 0)
            return usage

        return await self._run("disk usage", measure)

    async def reap(self, own_instance_id: str) -> ReclaimedCounts:
        def sweep() -> ReclaimedCounts:
            def doomed(found: dict[str, str] | None) -> bool:
                instance = (found or {}).get(labels.INSTANCE, own_instance_id)
                return instance != own_instance_id and labels.instance_is_dead(instance)

            removed = ReclaimedCounts()
            managed = {"label": f"{labels.MANAGED}=true"}
            for entry in self.client.api.containers(all=True, filters=managed):
                if doomed(entry.get("Labels")):
                    removed = removed.add(self._remove_sync(entry["Id"], []))
            for volume in self.client.api.volumes(filters=managed).get("Volumes") or []:
                if doomed(volume.get("Labels")):
                    removed = removed.add(self._remove_sync(None, [volume["Name"]]))
            return removed

        return await self._run("reaping orphans", sweep)

    async def count_owned(self, owner: str | None = None) -> int:
        filters = [f"{labels.MANAGED}=true"] + ([f"{labels.OWNER}={owner}"] if owner else [])
        listed = await self._run("listing", self.client.api.containers, all=True,
                                 filters={"label": filters})
        return len(listed)

    async def close(self) -> None:
        self._calls.shutdown()
        self.client.close()
