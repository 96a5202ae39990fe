"""Local provider: a working directory and process groups per environment, no engine needed.

The embedded default where no container engine exists. Each environment gets
``<root>/<env_id>/`` (``work/`` is its home and working directory), and each command runs in a
new session (its own process group) with the spec's limits applied before exec (``prlimit``,
``taskset``): memory as ``RLIMIT_AS``, CPUs as an affinity mask of ``ceil(cpus)`` cores (without
cgroups a fraction of a core cannot be enforced), no core dumps. Ports are host ports handed in
through ``PORT`` and ``PORT_<n>``; volumes are directories under ``work/``. Every process of
an environment runs in a PID namespace of its own (``pidns``): reclaim ends the namespace,
which ends every process in it however it detached, kills every labelled process (the
fallback where namespaces are unavailable) and removes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thunder_middleware.tools import labels
from thunder_middleware.tools.disk import directory_usage
from thunder_middleware.tools.errors import InvalidSpec, ProviderError
from thunder_middleware.tools.handles import ExecResult, ReclaimedCounts
from thunder_middleware.tools.providers import pidns
from thunder_middleware.tools.providers.base import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_TIMED_OUT,
    CommandOutput,
    EnvironmentProvider,
    ExecCommand,
    Instance,
    Placement,
)
from thunder_middleware.tools.providers.pipes import CommandPipes
from thunder_middleware.tools.providers.processes import (
    kill_processes,
    managed_processes,
    processes_with,
)
from thunder_middleware.tools.specs import EnvSpec

logger = logging.getLogger(__name__)
_REMOVE_ATTEMPTS = 5
#: a directory without metadata younger than this may be a creation in flight (of another
#: sidecar sharing the root); older, it is a leftover
HALF_MADE_AGE_S = 60.0
_READ_GRACE_S = 0.2  # output still arriving after exit (background children may hold the pipe)
_PRLIMIT = shutil.which("prlimit")
_TASKSET = shutil.which("taskset")


def limited_argv(argv: list[str], spec: EnvSpec) -> list[str]:
    """Wrap a command in util-linux ``prlimit``/``taskset`` so limits apply before it runs.

    Setting limits in a ``preexec_fn`` would force a full ``fork`` of the sidecar for every
    command (tens of ms for a large process under load); the wrappers keep ``vfork`` spawning.
    """
    wrapped = list(argv)
    if spec.cpus and _TASKSET:
        allowed = sorted(os.sched_getaffinity(0))[: math.ceil(spec.cpus)]
        wrapped = [_TASKSET, "-c", ",".join(map(str, allowed)), *wrapped]
    if _PRLIMIT:
        limits = ["--core=0"] + ([f"--as={spec.memory}"] if spec.memory else [])
        wrapped = [_PRLIMIT, *limits, "--", *wrapped]
    elif spec.memory:
        raise InvalidSpec("memory limits need util-linux prlimit on this host", param="memory")
    return wrapped


def _inside(work: Path, path: str | None) -> Path:
    """Map an environment path (``/src``) to a directory under ``work``."""
    if not path:
        return work
    target = (work / path.lstrip("/")).resolve()
    if not target.is_relative_to(work.resolve()):
        raise InvalidSpec(f"path {path!r} leaves the environment", param="workdir")
    return target


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class LocalProvider(EnvironmentProvider):
    name = "local"

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root or os.environ.get("THUNDER_ENV_ROOT", "/tmp/thunder-envs"))
        self.root.mkdir(parents=True, exist_ok=True)
        #: Environments whose directory survived every removal attempt (also logged).
        self.removal_failures = 0
        #: whether environments get a PID namespace each (see pidns)
        self.pid_namespaces = pidns.namespaces_work()

    def _in_namespace(self, instance: Instance, argv: list[str]) -> list[str]:
        ns_pid: int | None = instance.data.get("ns_pid")
        return argv if ns_pid is None else pidns.enter_argv(ns_pid, argv)

    async def validate(self, spec: EnvSpec) -> None:
        argv = spec.command_argv()
        if argv and shutil.which(argv[0]) is None and not Path(argv[0]).is_absolute():
            raise InvalidSpec(f"command not found on this host: {argv[0]!r}", param="command")

    def _environment(self, instance: Instance, extra: dict[str, str] | None) -> dict[str, str]:
        base = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(instance.data["work"]),
            "TMPDIR": str(instance.data["work"]),
        }
        base.update(instance.data["env"])
        base.update(extra or {})
        base.update(instance.data["labels"])  # last: labels cannot be overridden
        return base

    async def create(self, placement: Placement) -> Instance:
        spec = placement.spec
        env_dir = self.root / placement.env_id
        work = env_dir / "work"
        try:
            # the metadata first: a directory is never without its owner, so release and the
            # start-up sweep always find it, even when a later step fails
            env_dir.mkdir(parents=True)
            meta = {"owner": placement.owner, "instance": placement.instance_id,
                    "env_id": placement.env_id, "created_at": time.time()}
            (env_dir / "meta.json").write_text(json.dumps(meta))
            work.mkdir()
            for volume in spec.volumes:
                _inside(work, volume.mount).mkdir(parents=True, exist_ok=True)
            cwd = _inside(work, spec.workdir)
            cwd.mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as exc:  # ValueError: a path the OS cannot hold
            shutil.rmtree(env_dir, ignore_errors=True)
            raise ProviderError(f"cannot create the environment directory: {exc}") from exc
        ports = {f"PORT_{port}": str(host) for port, host in placement.host_ports.items()}
        if placement.host_ports:
            ports["PORT"] = str(next(iter(placement.host_ports.values())))
        instance = Instance(
            env_id=placement.env_id,
            owner=placement.owner,
            ref=str(env_dir),
            data={
                "work": work,
                "cwd": cwd,
                "env": {**spec.env, **ports},
                "labels": labels.process_labels(placement.owner, placement.instance_id,
                                                placement.env_id),
                "spec": spec,
                "main": None,
            },
        )
        holder_argv = pidns.holder_argv() if self.pid_namespaces else None
        if holder_argv is not None:
            try:
                holder = await asyncio.create_subprocess_exec(
                    *holder_argv, cwd=cwd, env=self._environment(instance, None),
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
                instance.data["holder"] = holder
                instance.data["ns_pid"] = await pidns.namespace_pid(holder)
            except OSError as exc:
                pidns.end_namespace(None, instance.data.get("holder"))
                shutil.rmtree(env_dir, ignore_errors=True)
                raise ProviderError(f"cannot start the environment's PID namespace: {exc}"
                                    ) from exc
        argv = spec.command_argv()
        if argv:
            log = open(env_dir / "main.log", "ab")  # noqa: SIM115 - handed to the child
            try:
                instance.data["main"] = await asyncio.create_subprocess_exec(
                    *self._in_namespace(instance, limited_argv(argv, spec)), cwd=cwd,
                    env=self._environment(instance, None),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True,
                )
            except OSError as exc:
                pidns.end_namespace(instance.data.get("ns_pid"), instance.data.get("holder"))
                shutil.rmtree(env_dir, ignore_errors=True)
                raise InvalidSpec(f"cannot start {argv[0]!r}: {exc.strerror}",
                                  param="command") from exc
            finally:
                log.close()
        return instance

    async def is_running(self, instance: Instance) -> bool:
        if not Path(instance.ref).exists():
            return False
        main: asyncio.subprocess.Process | None = instance.data["main"]
        return main is None or main.returncode is None

    async def run_command(self, instance: Instance, command: ExecCommand) -> ExecResult:
        output = CommandOutput(command.output_limit)
        argv, workdir = command.argv, command.workdir
        cwd = _inside(instance.data["work"], workdir) if workdir else instance.data["cwd"]
        if not cwd.is_dir():
            return output.refuse(EXIT_NOT_EXECUTABLE, f"workdir {workdir!r} does not exist")
        environment = self._environment(instance, command.env)
        if "/" not in argv[0] and shutil.which(argv[0], path=environment["PATH"]) is None:
            return output.refuse(EXIT_NOT_FOUND, f"{argv[0]}: command not found")
        # Our own pipes, not asyncio's PIPE: asyncio's wait() also waits for its pipes to close,
        # so a command that leaves a background child (``server &``) would hang the exec.
        with CommandPipes(output.stdout, output.stderr) as pipes:
            try:
                process = await asyncio.create_subprocess_exec(
                    *self._in_namespace(instance, limited_argv(argv, instance.data["spec"])),
                    cwd=cwd, env=environment,
                    stdin=asyncio.subprocess.DEVNULL, stdout=pipes.stdout_write,
                    stderr=pipes.stderr_write, start_new_session=True,
                )
            except FileNotFoundError:
                return output.refuse(EXIT_NOT_FOUND, f"{argv[0]}: command not found")
            except PermissionError:
                return output.refuse(EXIT_NOT_EXECUTABLE, f"{argv[0]}: permission denied")
            pipes.child_started()
            timed_out = False
            try:
                exit_code = await asyncio.wait_for(process.wait(), command.timeout_s)
            except TimeoutError:
                timed_out = True
                _kill_group(process.pid)
                await process.wait()
                exit_code = EXIT_TIMED_OUT
            except asyncio.CancelledError:
                _kill_group(process.pid)  # the caller is gone: nobody will read the result
                raise
            await pipes.drained(_READ_GRACE_S)
        if exit_code < 0:  # killed by a signal: report it the way shells and Docker do
            exit_code = 128 - exit_code
        return output.result(exit_code, timed_out=timed_out)

    async def destroy(self, instance: Instance) -> ReclaimedCounts:
        """Kill and remove; a step that fails is logged and the next still runs, so that a
        failure to kill or to read never leaves the directory behind."""
        holder: asyncio.subprocess.Process | None = instance.data.get("holder")
        ns_pid: int | None = instance.data.get("ns_pid")
        in_namespace = set(pidns.members(ns_pid))
        pidns.end_namespace(ns_pid, holder)  # every process in it dies with its first
        if holder is not None:
            await holder.wait()
        try:
            # the fallback without a namespace, and whatever escaped one
            labelled = processes_with(labels.ENV_VAR_ENV_ID, instance.env_id)
            kill_processes(labelled)
            ours = {ns_pid, holder.pid if holder is not None else None}
            killed = len((in_namespace | set(labelled)) - ours)
        except OSError as exc:
            logger.warning("environment %s: finding its processes failed: %r", instance.env_id, exc)
            killed = len(in_namespace)
        main: asyncio.subprocess.Process | None = instance.data.get("main")
        if main is not None and main.returncode is None:
            # os.killpg, not main.kill(): Popen.send_signal() polls first and would reap the
            # child behind asyncio's child watcher (which then reports exit status 255).
            _kill_group(main.pid)
            await main.wait()
        env_dir = Path(instance.ref)
        existed = env_dir.exists()
        if not await asyncio.to_thread(self._remove_directory, env_dir):
            self.removal_failures += 1
        return ReclaimedCounts(processes=killed, directories=int(existed))

    def _remove_directory(self, env_dir: Path) -> bool:
        """``rmtree`` with retries (a process dying meanwhile may still write a file); True
        once the directory is gone. Not ``ignore_errors``: a failure must be seen."""
        for attempt in range(_REMOVE_ATTEMPTS):
            try:
                shutil.rmtree(env_dir)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("removing %s failed (attempt %d): %r", env_dir, attempt + 1, exc)
                time.sleep(0.05 * (attempt + 1))
            if not env_dir.exists():
                return True
        logger.error("environment directory %s left behind after %d attempts",
                     env_dir, _REMOVE_ATTEMPTS)
        return False

    async def disk_usage(self, instances: list[Instance]) -> dict[str, int]:
        def measure() -> dict[str, int]:
            return {item.env_id: directory_usage(item.ref) for item in instances}

        return await asyncio.to_thread(measure)

    async def reap(self, own_instance_id: str) -> ReclaimedCounts:
        def sweep() -> ReclaimedCounts:
            doomed = [pid for pid, found in managed_processes().items()
                      if found.get(labels.ENV_VAR_INSTANCE, own_instance_id) != own_instance_id
                      and labels.instance_is_dead(found[labels.ENV_VAR_INSTANCE])]
            killed = kill_processes(doomed)
            removed = 0
            for env_dir, meta in self._environment_metadata():
                instance = meta.get("instance", "")
                if instance != own_instance_id and labels.instance_is_dead(instance):
                    shutil.rmtree(env_dir, ignore_errors=True)
                    removed += 1
            for env_dir in self._half_made():
                shutil.rmtree(env_dir, ignore_errors=True)
                removed += 1
            return ReclaimedCounts(processes=killed, directories=removed)

        return await asyncio.to_thread(sweep)

    async def count_owned(self, owner: str | None = None) -> int:
        return sum(owner is None or meta.get("owner") == owner
                   for _, meta in self._environment_metadata())

    def _half_made(self) -> Iterator[Path]:
        """Directories without metadata that no creation is still making: what a creation
        that died between its mkdir and its metadata (or an older sidecar) left behind."""
        limit = time.time() - HALF_MADE_AGE_S
        for env_dir in self.root.iterdir():
            try:
                if env_dir.is_dir() and not (env_dir / "meta.json").exists() \
                        and env_dir.stat().st_mtime < limit:
                    yield env_dir
            except OSError:
                continue

    def _environment_metadata(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Each environment directory under the root with its ``meta.json``; directories
        without readable metadata (half-created or half-removed) are not environments."""
        for env_dir in self.root.iterdir():
            try:
                meta = json.loads((env_dir / "meta.json").read_text())
            except (OSError, ValueError):
                continue
            yield env_dir, meta
