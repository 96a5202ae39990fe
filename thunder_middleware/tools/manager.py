"""EnvironmentManager: environments ready before they are needed, gone when the program ends.

Policy lives here (when to create, how many at once, retries, waiting, reclaiming); the
provider does the I/O. Preparation runs as a background task per environment: it first takes
a slot under the cap on live environments (requests beyond it queue in FIFO order, they do not
fail), then a creation slot (bounded concurrency towards the engine), creates with tenacity
retries on transient engine errors, and polls the readiness check. A janitor task reclaims
idle environments and samples disk use.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from thunder_middleware.tools import labels
from thunder_middleware.tools.config import ManagerConfig
from thunder_middleware.tools.creation import create_with_retries
from thunder_middleware.tools.disk import DiskLedger
from thunder_middleware.tools.errors import (
    EnvironmentGone,
    InvalidSpec,
    NoEnvironment,
    PreparationFailed,
    ProgramReleased,
    ProviderError,
    ToolEnvironmentError,
    TransientProviderError,
)
from thunder_middleware.tools.handles import (
    EnvHandle,
    EnvState,
    ExecResult,
    ReclaimedCounts,
    ReclaimReport,
)
from thunder_middleware.tools.janitor import doomed_environments, run_janitor
from thunder_middleware.tools.metrics import ToolMetrics
from thunder_middleware.tools.ports import PortPool, PortsExhausted
from thunder_middleware.tools.providers.base import EnvironmentProvider, Placement
from thunder_middleware.tools.readiness import wait_until_ready
from thunder_middleware.tools.records import EnvironmentRecord
from thunder_middleware.tools.specs import EnvSpec, command_argv

log = logging.getLogger(__name__)

#: Reclaim reasons after which the program's environment must not come back by itself.
FINAL_REASONS = frozenset({"release", "terminated", "close"})


@dataclass(slots=True)
class _KeyLock:
    """A program's lock and how many tasks hold it or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class EnvironmentManager:
    def __init__(
        self,
        provider: EnvironmentProvider,
        config: ManagerConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        instance_id: str | None = None,
        default_spec: EnvSpec | None = None,
        program_status: Callable[[str], str | None] | None = None,
        exec_path: Callable[[str], str] | None = None,
    ) -> None:
        self.provider = provider
        self.config = config or ManagerConfig()
        self.instance_id = instance_id or labels.current_instance_id()
        self.default_spec = default_spec
        self.program_status = program_status  # janitor reclaims envs of terminated programs
        self._exec_path = exec_path
        self.ports = PortPool(*self.config.port_range)
        self.disk = DiskLedger()
        self.metrics = ToolMetrics(self.counts_by_state, registry)
        self._current: dict[str, EnvironmentRecord] = {}
        self._history: OrderedDict[str, EnvironmentRecord] = OrderedDict()
        self._locks: dict[str, _KeyLock] = {}  # only while someone holds or waits
        self._live_slots = asyncio.Semaphore(self.config.max_live)
        self._create_slots = asyncio.Semaphore(self.config.prepare_concurrency)
        self._ids = itertools.count(1)
        self._janitor: asyncio.Task[None] | None = None
        self.reaped = ReclaimedCounts()

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> ReclaimedCounts:
        """Reap what crashed sidecars left (by label), then start the janitor."""
        self.reaped = await self.provider.reap(self.instance_id)
        for kind, count in self.reaped.model_dump().items():
            if count:
                self.metrics.reclaimed.labels(kind=kind, reason="orphan").inc(count)
        if self._janitor is None:
            self._janitor = asyncio.create_task(run_janitor(self), name="tool-env-janitor")
        return self.reaped

    async def close(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
            self._janitor = None
        if self.config.reclaim_on_close:
            keys = list(self._current)
            await asyncio.gather(*(self.reclaim(key, reason="close") for key in keys))
        await self.provider.close()

    # ---------------------------------------------------------------- declaring
    @contextlib.asynccontextmanager
    async def _locked(self, program_key: str) -> AsyncIterator[None]:
        """Hold the program's lock. The entry lives while a task holds or waits for it, so
        every contender of a key queues on the same lock (FIFO) and no entry outlives its
        last user: the table stays as small as the work in flight, whatever the history."""
        entry = self._locks.get(program_key)
        if entry is None:
            entry = self._locks[program_key] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0 and self._locks.get(program_key) is entry:
                del self._locks[program_key]

    async def validate(self, spec: EnvSpec) -> None:
        """Raise InvalidSpec/UnknownImage (400) for a spec the provider cannot run."""
        await self.provider.validate(spec)

    def has_environment(self, program_key: str) -> bool:
        """Whether an exec or tool intent of ``program_key`` would find (or re-create) an
        environment: a current one, one reclaimed for a non-final reason, or the default."""
        if program_key in self._current:
            return True
        try:
            return self._spec_to_recreate(program_key) is not None
        except ProgramReleased:
            return False

    def _spec_to_recreate(self, program_key: str) -> EnvSpec | None:
        """The spec an exec re-creates a program's environment from when it has no current
        one: the reclaimed one's (idle, failure, removal), else the default; ProgramReleased
        when its last environment was reclaimed for good."""
        old = self._history.get(program_key)
        if old is not None and old.reclaim_reason in FINAL_REASONS:
            raise ProgramReleased("the program was released; its environment is gone")
        return old.spec if old is not None else self.default_spec

    def exec_arguments(self, command: list[str] | str,
                       timeout_s: float | None) -> tuple[list[str], float]:
        """(argv, timeout) of an exec, or InvalidSpec (400) before anything happens."""
        timeout = self.config.exec_timeout(timeout_s)
        argv = command_argv(command)
        if not argv or not argv[0]:
            raise InvalidSpec("command must not be empty", param="command")
        return argv, timeout

    def _new_record(self, program_key: str, spec: EnvSpec) -> EnvironmentRecord:
        env_id = f"{os.getpid():x}-{next(self._ids):x}-{int(time.time() * 1000) % 10**8:x}"
        record = EnvironmentRecord(env_id=env_id, owner=program_key, spec=spec,
                                   provider=self.provider.name)
        self._current[program_key] = record
        self._history.pop(program_key, None)
        return record

    async def declare(self, program_key: str, spec: EnvSpec, *, prepare: bool = True,
                      validated: bool = False) -> EnvHandle:
        """Record the program's environment (validated now: bad specs are a 400, not a leak).

        Re-declaring the same spec is a no-op; a different spec replaces the old environment.
        ``validated``: the caller already ran :meth:`validate`, so unless the program's lock
        is contended the record exists before this coroutine first yields (an admission
        checked just before cannot be overtaken).
        """
        if not validated:
            await self.provider.validate(spec)
        async with self._locked(program_key):
            record = self._current.get(program_key)
            if record is not None and record.spec != spec:
                await self._reclaim_record(record, "redeclared")
                record = None
            if record is None:
                record = self._new_record(program_key, spec)
            record.touch()
            if prepare:
                self._start_preparation(record)
            return self._handle(record)

    async def prepare(self, program_key: str) -> None:
        """Start creating the program's environment now, if it has one; return at once."""
        record = await self._usable_record(program_key, required=False)
        if record is not None:
            record.touch()
            self._start_preparation(record)

    async def tool_intent(self, program_key: str, tools: list[str]) -> EnvHandle | None:
        """A tool call is coming: ready the environment. None if the program has none."""
        await self.prepare(program_key)
        record = self._current.get(program_key)
        return self._handle(record) if record is not None else None

    async def _usable_record(self, program_key: str, *, required: bool) -> EnvironmentRecord | None:
        """The current record, re-created after an idle reclaim or a failure, or from the
        default spec; 409 for a released program, 404 (if required) when there is none."""
        async with self._locked(program_key):
            record = self._current.get(program_key)
            if record is None:
                spec = self._spec_to_recreate(program_key)
                if spec is None:
                    if required:
                        raise NoEnvironment(
                            "the program has no environment: declare one with "
                            "PUT /programs/{id}/environment"
                        )
                    return None
                record = self._new_record(program_key, spec)
            elif record.state is EnvState.FAILED:
                self._release_resources(record)
                record = self._new_record(program_key, record.spec)
            return record

    # ---------------------------------------------------------------- preparing
    def _start_preparation(self, record: EnvironmentRecord) -> None:
        if record.task is None and record.state is EnvState.DECLARED:
            record.state = EnvState.QUEUED
            record.task = asyncio.create_task(
                self._prepare(record), name=f"prepare-{record.env_id}"
            )

    async def _prepare(self, record: EnvironmentRecord) -> None:
        try:
            await self._live_slots.acquire()
            record.holds_slot = True
            record.state = EnvState.PREPARING
            started = time.monotonic()
            async with self._create_slots:
                record.cancellable = False
                try:
                    await self._create(record)
                finally:
                    record.cancellable = True
            instance = record.instance
            if record.reclaim_reason is not None or instance is None:
                return  # reclaimed while creating: the reclaimer removes what was made
            await wait_until_ready(self.provider, instance, record.spec.readiness,
                                   record.host_ports)
            record.preparation_s = time.monotonic() - started
            record.ready_at = time.time()
            record.state = EnvState.READY
            self.metrics.preparation_seconds.observe(record.preparation_s)
        except ToolEnvironmentError as exc:
            await self._fail(record, exc)
        except PortsExhausted as exc:
            await self._fail(record, TransientProviderError(str(exc)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine error we did not map: report it, leak nothing
            log.exception("preparing %s failed", record.env_id)
            await self._fail(record, ProviderError(f"{type(exc).__name__}: {exc}"))
        finally:
            record.settled.set()

    async def _create(self, record: EnvironmentRecord) -> None:
        if self.provider.lends_host_ports:
            ports = self.ports.acquire(record.env_id, len(record.spec.ports))
        else:
            ports = list(record.spec.ports)
        record.host_ports = dict(zip(record.spec.ports, ports, strict=True))
        self.metrics.ports_in_use.set(self.ports.in_use)
        placement = Placement(
            env_id=record.env_id, owner=record.owner, instance_id=self.instance_id,
            spec=record.spec, host_ports=record.host_ports,
            labels=labels.resource_labels(record.owner, self.instance_id, record.env_id),
        )
        record.instance = await create_with_retries(self.provider, placement,
                                                    self.config.create_attempts)

    async def _fail(self, record: EnvironmentRecord, error: ToolEnvironmentError) -> None:
        if record.reclaim_reason is not None:
            return
        record.failure = error
        record.state = EnvState.FAILED
        self.metrics.failures.labels(code=error.code).inc()
        await self._destroy(record, "failed")

    # ---------------------------------------------------------------- executing
    async def exec(
        self,
        program_key: str,
        command: list[str] | str,
        *,
        timeout_s: float | None = None,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        """Run a command in the program's environment, waiting for it to be ready first."""
        argv, timeout = self.exec_arguments(command, timeout_s)
        record = await self._usable_record(program_key, required=True)
        assert record is not None
        record.touch()
        record.active_execs += 1
        try:
            waited = await self._wait_ready(record)
            instance = record.instance
            if instance is None:
                raise EnvironmentGone(self._gone_message(record))
            result = await self.provider.exec(instance, argv, timeout_s=timeout,
                                              workdir=workdir, env=env,
                                              output_limit=self.config.output_limit)
            if record.reclaim_reason is not None:
                raise EnvironmentGone(self._gone_message(record))
        finally:
            record.active_execs -= 1
            record.touch()
        self.metrics.exec_seconds.observe(result.duration_s)
        return result.model_copy(update={"waited_for_ready_s": waited})

    async def _wait_ready(self, record: EnvironmentRecord) -> float:
        self._start_preparation(record)
        started = time.monotonic()
        try:
            await asyncio.wait_for(record.settled.wait(), self.config.ready_wait_timeout_s)
        except TimeoutError:
            raise PreparationFailed(
                f"environment not ready within {self.config.ready_wait_timeout_s:g} s"
            ) from None
        waited = time.monotonic() - started
        self.metrics.readiness_wait_seconds.observe(waited)
        if record.state is EnvState.READY:
            return waited
        if record.state is EnvState.FAILED and record.failure is not None:
            raise type(record.failure)(
                f"environment preparation failed: {record.failure.message}",
                param=record.failure.param,
            )
        raise EnvironmentGone(self._gone_message(record))

    @staticmethod
    def _gone_message(record: EnvironmentRecord) -> str:
        return f"the environment was reclaimed ({record.reclaim_reason}) while the command waited"

    # ---------------------------------------------------------------- reclaiming
    async def reclaim(self, program_key: str, reason: str = "release") -> ReclaimReport:
        """Remove everything the program's environment holds, now. Idempotent."""
        async with self._locked(program_key):
            record = self._current.get(program_key)
            report = ReclaimReport(program_id=program_key, reason=reason)
            if record is None:
                old = self._history.get(program_key)
                if old is not None and reason in FINAL_REASONS:
                    old.reclaim_reason = reason
                return report
            freed = self.disk.of_env(record.env_id)
            counts, ports = await self._reclaim_record(record, reason)
        return ReclaimReport(
            program_id=program_key, reason=reason, environments=1, ports=ports,
            disk_bytes_freed=freed, **counts.model_dump(),
        )

    async def _reclaim_record(
        self, record: EnvironmentRecord, reason: str
    ) -> tuple[ReclaimedCounts, int]:
        record.reclaim_reason = reason
        task = record.task
        if task is not None and not task.done():
            if record.cancellable:
                task.cancel()
            await asyncio.wait([task])
        counts, ports = await self._destroy(record, reason)
        record.state = EnvState.RECLAIMED
        record.settled.set()
        self._current.pop(record.owner, None)
        self._history[record.owner] = record
        while len(self._history) > self.config.history:
            self._history.popitem(last=False)
        return counts, ports

    async def _destroy(self, record: EnvironmentRecord, reason: str) -> tuple[ReclaimedCounts, int]:
        counts = ReclaimedCounts()
        instance, record.instance = record.instance, None
        if instance is not None:
            counts = await self.provider.destroy(instance)
        ports = self._release_resources(record)
        for kind, count in (*counts.model_dump().items(), ("ports", ports)):
            if count:
                self.metrics.reclaimed.labels(kind=kind, reason=reason).inc(count)
        return counts, ports

    def _release_resources(self, record: EnvironmentRecord) -> int:
        """Give back the ports, the cap slot and the disk entry (idempotent)."""
        ports = self.ports.release(list(record.host_ports.values()))
        record.host_ports = {}
        self.metrics.ports_in_use.set(self.ports.in_use)
        if record.holds_slot:
            record.holds_slot = False
            self._live_slots.release()
        self.disk.forget(record.env_id)
        self.metrics.disk_bytes.set(self.disk.total())
        return ports

    # ---------------------------------------------------------------- collection
    async def collect_garbage(self) -> list[ReclaimReport]:
        """Reclaim idle environments and those of programs the sidecar no longer knows."""
        doomed = doomed_environments(list(self._current.values()), time.monotonic(),
                                     self.config.idle_timeout_s, self.program_status)
        return list(await asyncio.gather(*(self.reclaim(key, reason) for key, reason in doomed)))

    async def sample_disk(self) -> int:
        """Measure every live environment's disk use; returns the total in bytes."""
        live = [r for r in self._current.values() if r.instance is not None
                and r.state in (EnvState.PREPARING, EnvState.READY)]
        usage = await self.provider.disk_usage([r.instance for r in live if r.instance])
        for record in live:
            if record.env_id in usage and record.reclaim_reason is None:
                self.disk.record(record.env_id, record.owner, usage[record.env_id])
        total = self.disk.total()
        self.metrics.disk_bytes.set(total)
        return total

    # ---------------------------------------------------------------- views
    def _handle(self, record: EnvironmentRecord) -> EnvHandle:
        path = self._exec_path(record.owner) if self._exec_path else None
        handle = record.handle(record.owner, path)
        handle.disk_bytes = self.disk.of_env(record.env_id)
        return handle

    def describe(self, program_key: str) -> list[EnvHandle]:
        record = self._current.get(program_key) or self._history.get(program_key)
        return [self._handle(record)] if record is not None else []

    def counts_by_state(self) -> dict[EnvState, int]:
        counts: dict[EnvState, int] = {}
        for record in self._current.values():
            counts[record.state] = counts.get(record.state, 0) + 1
        return counts

    def live_programs(self) -> list[str]:
        return list(self._current)

    def disk_of_program(self, program_key: str) -> int:
        return self.disk.of_program(program_key)
