"""The one interface every environment provider implements, and helpers they share.

The manager owns policy (when to create, how many, retries, reclaim); a provider only knows how
to make, probe, run in and remove one environment on its substrate. All methods are async and
must not block the event loop.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any

from thunder_middleware.tools.handles import ExecResult, ReclaimedCounts
from thunder_middleware.tools.specs import EnvSpec

DEFAULT_OUTPUT_LIMIT = 64 * 1024
EXIT_TIMED_OUT = 124
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
#: The main process of an environment whose spec names no command: it keeps the environment up
#: until it is reclaimed (about 68 years of sleep).
KEEPALIVE = ["sleep", "2147483647"]


@dataclass
class Placement:
    """Everything a provider needs to create one environment."""

    env_id: str
    owner: str
    instance_id: str
    spec: EnvSpec
    host_ports: dict[int, int]  # environment port -> host port lent by the manager's PortPool
    labels: dict[str, str]


@dataclass
class Instance:
    """A created environment as its provider knows it."""

    env_id: str
    owner: str
    ref: str  # container id, pod name, working directory
    host: str = "127.0.0.1"  # where published ports are reached
    data: dict[str, Any] = field(default_factory=dict)


class OutputBuffer:
    """Collects a stream up to ``limit`` bytes and notes whether more was dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.truncated = False

    def feed(self, chunk: bytes | None) -> None:
        if not chunk:
            return
        room = self.limit - self._size
        if room <= 0:
            self.truncated = True
            return
        if len(chunk) > room:
            chunk = chunk[:room]
            self.truncated = True
        self._chunks.append(chunk)
        self._size += len(chunk)

    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ExecCommand:
    """One command to run inside an environment, as ``EnvironmentProvider.exec`` got it."""

    argv: list[str]
    timeout_s: float
    workdir: str | None = None
    env: dict[str, str] | None = None
    output_limit: int = DEFAULT_OUTPUT_LIMIT


class CommandOutput:
    """A running command's stdout and stderr (each kept to the limit) and its start time.

    Every provider reports a command through ``result``/``refuse``, so duration, truncation and
    the timed-out flag mean the same whatever the substrate.
    """

    def __init__(self, limit: int) -> None:
        self.started = time.monotonic()
        self.stdout = OutputBuffer(limit)
        self.stderr = OutputBuffer(limit)

    def result(self, exit_code: int, *, timed_out: bool = False) -> ExecResult:
        return ExecResult(
            exit_code=exit_code, stdout=self.stdout.text(), stderr=self.stderr.text(),
            duration_s=time.monotonic() - self.started,
            truncated=self.stdout.truncated or self.stderr.truncated, timed_out=timed_out,
        )

    def refuse(self, exit_code: int, message: str) -> ExecResult:
        """The command could not start: the reason goes to stderr, as a shell would write it."""
        return ExecResult(exit_code=exit_code, stdout="", stderr=message,
                          duration_s=time.monotonic() - self.started)


class EnvironmentProvider(abc.ABC):
    name: str = "abstract"
    #: True when environment ports are published on host ports lent from the manager's pool;
    #: False when each environment has its own address (a pod IP) and keeps its own ports.
    lends_host_ports: bool = True

    @abc.abstractmethod
    async def validate(self, spec: EnvSpec) -> None:
        """Raise ``InvalidSpec``/``UnknownImage`` for a spec this provider cannot run."""

    @abc.abstractmethod
    async def create(self, placement: Placement) -> Instance:
        """Create and start the environment; on failure leave nothing behind and raise."""

    @abc.abstractmethod
    async def is_running(self, instance: Instance) -> bool:
        """False when the environment's main process has died (preparation then fails)."""

    async def exec(
        self,
        instance: Instance,
        argv: list[str],
        *,
        timeout_s: float,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> ExecResult:
        """Run a command; never raises for the command's own failure (exit codes say it)."""
        return await self.run_command(
            instance, ExecCommand(argv, timeout_s, workdir, env, output_limit)
        )

    @abc.abstractmethod
    async def run_command(self, instance: Instance, command: ExecCommand) -> ExecResult:
        """``exec`` on this substrate: the options come as one value so that the providers'
        signatures cannot drift from the interface."""

    @abc.abstractmethod
    async def destroy(self, instance: Instance) -> ReclaimedCounts:
        """Remove everything of the environment; idempotent."""

    @abc.abstractmethod
    async def disk_usage(self, instances: list[Instance]) -> dict[str, int]:
        """Bytes held on disk per env_id (best effort, sampled)."""

    @abc.abstractmethod
    async def reap(self, own_instance_id: str) -> ReclaimedCounts:
        """Remove resources left by sidecar instances that are provably dead."""

    @abc.abstractmethod
    async def count_owned(self, owner: str | None = None) -> int:
        """Environments carrying the managed label (of ``owner`` if given): for leak checks."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release client connections and threads."""
