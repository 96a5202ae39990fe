"""The asyncio runtime around the pure policy: report events, apply decisions, nothing else.

The runtime owns no scheduling logic. It turns what happens on the wire (a request arrives,
a call completes, a client leaves, a backend dies, time passes) into calls on the same
:class:`ProgramScheduler` the simulator drives, and applies the decisions that come back in
order: opening gates, counting pauses and migrations, terminating programs and reclaiming
what they own. The policy runs on a clock ``time_scale`` times faster than the wall, which
divides every policy time constant, so the sidecar can front a time-scaled twin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from thunder_middleware.policy import ProgramScheduler
from thunder_middleware.policy.self_check import ModeChange
from thunder_middleware.policy.types import (
    Admit,
    CallTiming,
    Decision,
    Expire,
    MarkForPause,
    Pause,
    Restore,
    Status,
    Usage,
)
from thunder_middleware.policy.views import ProgramView
from thunder_middleware.sidecar.backends.base import Backend, BackendMetrics
from thunder_middleware.sidecar.backends.pool import BackendPool
from thunder_middleware.sidecar.errors import APIError, not_found
from thunder_middleware.sidecar.gates import (
    ProgramEnded,
    ProgramGates,
    Receive,
    wait_for_backend,
)
from thunder_middleware.sidecar.identity import is_anonymous_key, split_key
from thunder_middleware.sidecar.metrics import SidecarMetrics
from thunder_middleware.sidecar.persistence import ProgramStore, StoredProgram
from thunder_middleware.sidecar.registry import ProgramRegistry, TrackedProgram
from thunder_middleware.sidecar.store_guard import GuardedStore
from thunder_middleware.sidecar.tenant_gate import TenantGate
from thunder_middleware.sidecar.timeline import StepOutcome, StepRecord
from thunder_middleware.sidecar.tool_activity import ToolTimes

log = logging.getLogger(__name__)

#: Environment states in which prepare-ahead has nothing to do (EnvState values).
PREPARED_STATES = frozenset({"queued", "preparing", "ready"})


class EnvironmentPort(Protocol):
    """What the runtime needs from the tool-environment manager (contract 4)."""

    async def prepare(self, program_key: str) -> None: ...

    async def reclaim(self, program_key: str, reason: str = "release") -> Any: ...

    def describe(self, program_key: str) -> list[Any]: ...

    def has_environment(self, program_key: str) -> bool: ...


@dataclass(slots=True, eq=False)
class Lease:
    """A request let through its gate: where it goes and what it waited.

    A lease is one in-flight call of one program: it is ended exactly once (``ended``), by
    whichever comes first of the call's own end, its HTTP request's end, a release of its
    program or the watchdog. ``program`` is the record the call was admitted for, so a call
    that ends after its program was released and the id reused is never counted on the new
    program.
    """

    key: str
    backend: str
    arrival_wall: float
    arrival: float  # perf_counter at the gate
    queue_wait_s: float
    retried: bool = False
    program: TrackedProgram | None = None
    ended: bool = False
    #: monotonic time of the call's last sign of progress (start, each relayed event)
    progress: float = 0.0
    #: why the sidecar cut the call short (release, watchdog); None while it runs its course
    abort_reason: str | None = None
    #: how to cut the call short in its current phase (set by the proxy)
    on_abort: Callable[[], None] | None = None
    #: the task serving the call's HTTP request (the watchdog's last resort)
    task: asyncio.Task[Any] | None = None
    #: the KV tokens the call holds of its tenant's share (None: no tenant gate)
    tenant_tokens: int | None = None

    def abort(self, reason: str) -> None:
        """Ask the call to end now; its client gets ``reason`` as an error."""
        if self.ended or self.abort_reason is not None:
            return
        self.abort_reason = reason
        if self.on_abort is not None:
            try:
                self.on_abort()
            except Exception:
                log.exception("aborting a call of %s failed", self.key)


class SchedulerRuntime:
    """Binds a ProgramScheduler to live requests, backends and time."""

    def __init__(
        self,
        scheduler: ProgramScheduler,
        pool: BackendPool,
        metrics: SidecarMetrics,
        store: ProgramStore,
        *,
        time_scale: float = 1.0,
        tick_interval_s: float = 5.0,
        idle_timeout_s: float = 600.0,
        prep_ahead: int = 4,
        max_tool_names: int = 64,
        call_deadline_s: float = 605.0,
    ) -> None:
        self.scheduler = scheduler
        self.pool = pool
        self.metrics = metrics
        self.store = store
        self.gates = ProgramGates()
        self.registry = ProgramRegistry()
        self.environments: EnvironmentPort | None = None
        self.time_scale = time_scale
        self._logged_change: ModeChange | None = None
        self.tick_interval_s = tick_interval_s
        self.idle_timeout_s = idle_timeout_s
        self.prep_ahead = prep_ahead
        # a call with no progress for this long can no longer end by itself (the upstream
        # read timeout would have ended it): the watchdog ends it
        self.call_deadline_s = call_deadline_s
        self.inflight: set[Lease] = set()  # every lease not yet ended
        # fair share between tenants (several tenants configured): calls wait here first
        self.tenant_gate: TenantGate | None = None
        self._tick_task: asyncio.Task[None] | None = None
        # tenant caps (security.TenantCaps via the app): raise APIError(429) to refuse
        self.admit_program: Callable[[str], None] | None = None
        self.admit_environment: Callable[[str], None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._reclaims: dict[str, asyncio.Task[Any]] = {}  # the last reclaim of each key
        self._tools_running: dict[str, int] = {}  # execs in flight per program key
        self._prep_task: asyncio.Task[Any] | None = None  # the last prepare-ahead round
        self.tool_times = ToolTimes(max_tool_names)

    # --- clock and lifecycle -------------------------------------------------------------
    def now(self) -> float:
        """The policy's clock: monotonic seconds times the time scale."""
        return time.monotonic() * self.time_scale

    async def start(self) -> None:
        await self.pool.start(self)
        self._tick_task = asyncio.create_task(self._tick_loop(), name="policy tick")

    async def close(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10.0)
        await self.pool.close()

    def _spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        """Run environment work in the background; failures are logged (result None), never
        raised, so a caller that awaits the task sees a result or None."""
        async def guarded() -> Any:
            try:
                return await coro
            except Exception:
                log.exception("%s failed", what)
                return None

        task = asyncio.create_task(guarded(), name=what)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- request path -------------------------------------------------------------------
    def admit(self, key: str, *, environment: bool = False) -> None:
        """Raise APIError(429) unless ``key`` may be a live program (and, with
        ``environment``, own an environment): the program cap first, then the environment
        cap. Creates nothing, so a refusal leaves nothing behind."""
        if self.admit_program is not None and key not in self.registry.live \
                and not is_anonymous_key(key):
            self.admit_program(key)
        if environment and self.admit_environment is not None:
            self.admit_environment(key)

    def ensure_program(self, key: str) -> TrackedProgram:
        self.admit(key)
        program = self.registry.ensure(key, is_anonymous_key(key), time.time())
        program.last_activity = time.time()
        return program

    async def acquire(self, key: str, prompt_chars: int, receive: Receive,
                      *, retried: bool = False, prompt_tokens_hint: int | None = None,
                      call_tokens: int = 0) -> Lease:
        """Wait until the tenant's fair share (``call_tokens`` of KV) and then the policy let
        a request of ``key`` through; return where to send it.

        Raises ClientDisconnected (reported to the policy as abandoned) or APIError(409)
        when the program ends while the request waits.
        """
        program = self.ensure_program(key)
        gate = self.tenant_gate
        if gate is None:
            return await self._acquire(key, program, prompt_chars, receive, retried=retried,
                                       prompt_tokens_hint=prompt_tokens_hint)
        tenant = split_key(key)[0]
        await gate.enter(tenant, call_tokens, receive)
        try:
            lease = await self._acquire(key, program, prompt_chars, receive, retried=retried,
                                        prompt_tokens_hint=prompt_tokens_hint)
        except BaseException:
            gate.leave(tenant, call_tokens)
            raise
        lease.tenant_tokens = call_tokens
        return lease

    async def _acquire(self, key: str, program: TrackedProgram, prompt_chars: int,
                       receive: Receive, *, retried: bool,
                       prompt_tokens_hint: int | None) -> Lease:
        """The program gate: the policy's Admit or Restore."""
        arrival_wall = time.time()
        arrival = time.perf_counter()
        future = self.gates.open(key)
        try:
            self.apply(self.scheduler.on_request(
                key, self.now(), prompt_chars, prompt_tokens_hint=prompt_tokens_hint))
            backend = await wait_for_backend(future, receive)
        except ProgramEnded as exc:
            raise APIError(409, f"program {program.program_id!r} was {exc.reason} while "
                           "this request waited", param="program_id",
                           code="program_terminated") from exc
        except BaseException:
            if not future.done() and key in self.registry.live:
                self.apply(self.scheduler.on_request_abandoned(key, self.now()))
                self._add_step(program, StepRecord(
                    index=program.timeline.next_index(), arrival=arrival_wall,
                    queue_wait_s=time.perf_counter() - arrival, backend=None,
                    outcome="abandoned", stream=False))
            elif future.done() and not future.cancelled() and future.exception() is None:
                # let through at the very moment the client left: the call never happened
                self.apply(self.scheduler.on_request_done(key, self.now(), None, None))
            raise
        finally:
            self.gates.discard(key, future)
        wait = time.perf_counter() - arrival
        self.metrics.queue_wait.observe(wait)
        lease = Lease(key, backend, arrival_wall, arrival, wait, retried, program=program,
                      progress=time.monotonic(), task=asyncio.current_task())
        self.inflight.add(lease)
        return lease

    def complete(
        self,
        lease: Lease,
        *,
        usage: Usage | None,
        outcome: StepOutcome,
        stream: bool,
        first_token_s: float | None,
        total_s: float | None,
    ) -> None:
        """Report the end of a call (usage None when it failed or was aborted).

        Idempotent: only the first report of a lease counts, so every path that may end a
        call can report it without knowing whether another already did.
        """
        if lease.ended:
            return
        lease.ended = True
        lease.on_abort = None
        self.inflight.discard(lease)
        if lease.tenant_tokens is not None and self.tenant_gate is not None:
            self.tenant_gate.leave(split_key(lease.key)[0], lease.tenant_tokens)
        scale = self.time_scale
        timing = None
        if total_s is not None:
            timing = CallTiming(
                queue_wait_s=lease.queue_wait_s * scale,
                first_token_s=(first_token_s if first_token_s is not None else total_s) * scale,
                total_s=total_s * scale,
            )
        program = self.registry.live.get(lease.key)
        if program is not None and program is not lease.program:
            # the call's program was released and its id reused meanwhile: the new program
            # never admitted this call, so it must not count it (its in-flight count, KV
            # demand and timeline belong to its own calls)
            program = None
        elif program is not None or self.scheduler.program(lease.key) is not None:
            self.apply(self.scheduler.on_request_done(lease.key, self.now(), usage, timing))
        if usage is not None:
            self.metrics.record_usage(usage)
        if program is None:
            return
        program.last_activity = time.time()
        decode_s = None
        if first_token_s is not None and total_s is not None:
            decode_s = max(0.0, total_s - first_token_s)
        self._add_step(program, StepRecord(
            index=program.timeline.next_index(), arrival=lease.arrival_wall,
            queue_wait_s=lease.queue_wait_s, backend=lease.backend, outcome=outcome,
            stream=stream, prefill_s=first_token_s if stream else total_s, decode_s=decode_s,
            total_s=total_s,
            prompt_tokens=usage.prompt_tokens if usage else None,
            cached_tokens=usage.cached_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            retried=lease.retried,
        ))
        if program.anonymous:
            self.release(lease.key, reason="completed")

    def backend_failed(self, name: str, reason: str, *, hold_down_s: float = 0.0) -> None:
        """The proxy saw the backend fail a call: the pool marks it down (and probes it
        again only after ``hold_down_s``), the policy moves its programs (backend_down)."""
        self.pool.report_failure(name, reason, hold_down_s=hold_down_s)

    # --- control API --------------------------------------------------------------------
    def require_writable_store(self) -> None:
        """Raise a 503 while the store holds writes in memory (see store_guard)."""
        if isinstance(self.store, GuardedStore):
            self.store.require_writable()

    def environment_declared(self, key: str, spec: dict[str, Any]) -> None:
        """A declaration (PUT) replaced the program's environment: store its spec, so that a
        restarted sidecar declares it again, as it does for one given at registration."""
        program = self.registry.live.get(key)
        if program is not None:
            program.environment_spec = spec
            self._save(program)

    def register(self, key: str, environment_spec: dict[str, Any] | None = None) -> TrackedProgram:
        program = self.ensure_program(key)
        if environment_spec is not None:
            program.environment_spec = environment_spec
        self._save(program)
        return program

    def forget(self, key: str) -> None:
        """Undo a registration whose next step failed: no live, ended or stored trace.
        A program that a request has meanwhile joined is kept (it is in use)."""
        program = self.registry.live.get(key)
        if program is None or self.scheduler.program(key) is not None \
                or self.gates.is_waiting(key) or key in self._tools_running:
            return
        del self.registry.live[key]
        self.store.delete(key)

    def release(self, key: str, *, reason: str = "released") -> TrackedProgram:
        program = self.registry.live.get(key)
        view = self.scheduler.program(key)
        if program is None and (view is None or view.status == Status.TERMINATED):
            raise not_found(f"no live program {key.partition('/')[2]!r}"
                            + self._namespaced_hint(key), param="program_id")
        self.abort_calls(key, f"program {key.partition('/')[2]!r} was {reason} while this "
                         "call ran")
        if view is not None and view.status != Status.TERMINATED:
            self.apply(self.scheduler.on_release(key, self.now()))
        if reason == "released":
            self.metrics.releases.inc()
        ended = self._terminate(key, reason)
        assert ended is not None or program is None
        return ended or program  # type: ignore[return-value]

    def _namespaced_hint(self, key: str) -> str:
        """For a bare id that a gateway namespaced (``"<team>:<id>"``), the ids it became."""
        tenant, _, program_id = key.partition("/")
        near = sorted(p.program_id for p in self.registry.live.values()
                      if p.tenant == tenant and p.program_id.endswith(":" + program_id))[:3]
        if not near:
            return ""
        return (f"; live programs named like it: {', '.join(near)} (a LiteLLM proxy prefixes "
                "ids with the caller's team or key; through the proxy, send metadata "
                '{"end_session": true} on the last call to release it)')

    def abort_calls(self, key: str, reason: str) -> int:
        """Cut short every in-flight call of ``key`` (its client gets ``reason``) and end
        its accounting now; returns how many there were."""
        leases = [lease for lease in self.inflight if lease.key == key]
        for lease in leases:
            lease.abort(reason)
            self.complete(lease, usage=None, outcome="aborted", stream=False,
                          first_token_s=None, total_s=None)
        return len(leases)

    def end_overdue_calls(self) -> int:
        """The watchdog: end every call without progress for ``call_deadline_s``.

        Such a call cannot end by itself any more (a client that stopped reading blocks its
        writes; a bug may have lost its end): its accounting is released, its serving task
        cancelled, and it is counted in ``calls_ended_by_watchdog``.
        """
        limit = time.monotonic() - self.call_deadline_s
        overdue = [lease for lease in self.inflight if lease.progress < limit]
        for lease in overdue:
            log.warning("ending a call of %s: no progress for %.0f s", lease.key,
                        self.call_deadline_s)
            self.metrics.watchdog_ended.inc()
            lease.abort("the call made no progress within the request timeout")
            self.complete(lease, usage=None, outcome="failed", stream=False,
                          first_token_s=None, total_s=None)
            task = lease.task
            if task is not None and not task.done() and not task.cancelling():
                task.cancel()
        return len(overdue)

    async def finish_reclaim(self, key: str, timeout_s: float) -> tuple[bool, Any]:
        """Wait (at most ``timeout_s``) for the environment reclaim a termination started.

        Returns (finished, report). A reclaim still running at the timeout goes on in the
        background (shielded), so a slow engine delays the answer, never the cleanup.
        """
        task = self._reclaims.get(key)
        if task is None:
            return True, None
        try:
            report = await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            return False, None
        return True, report

    def _forget_reclaim(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._reclaims.get(key) is task:
            del self._reclaims[key]

    # --- tool activity (the environment router's hooks) ----------------------------------
    def tool_started(self, key: str) -> None:
        """An exec began: the program is alive, though it makes no LLM call meanwhile."""
        self._tools_running[key] = self._tools_running.get(key, 0) + 1
        self._tool_activity(key)

    def tool_finished(self, key: str, duration_s: float) -> None:
        """An exec ended: a sign of life again, and its time is the next step's tool time."""
        running = self._tools_running.get(key, 0) - 1
        if running > 0:
            self._tools_running[key] = running
        else:
            self._tools_running.pop(key, None)
        program = self._tool_activity(key)
        if program is not None:
            program.timeline.record_tool_time(duration_s)
            self._save(program)

    def tool_intent(self, key: str, tools: list[str], *, prepared: bool) -> TrackedProgram:
        """The live program ``key`` is about to run ``tools``: it is acting (a sign of life
        for idle expiry), and the tools and the time until its next call join that step
        (and the per-tool-name estimate). ``prepared``: an environment was readied for it."""
        program = self.registry.live[key]
        program.last_activity = time.time()
        program.timeline.record_intent(tools, program.last_activity)
        self.apply(self.scheduler.on_activity(key, self.now()))
        self.metrics.tool_intents.labels(outcome="prepared" if prepared else "recorded").inc()
        self._save(program)
        return program

    def _tool_activity(self, key: str) -> TrackedProgram | None:
        program = self.registry.live.get(key)
        if program is None:
            return None
        program.last_activity = time.time()
        self.apply(self.scheduler.on_activity(key, self.now()))
        return program

    def program_status(self, key: str) -> str | None:
        """"live", "terminated" or None (never seen): what the environment manager asks."""
        if key in self.registry.live:
            return "live"
        return "terminated" if key in self.registry.ended else None

    def program_view(self, key: str) -> ProgramView | None:
        return self.scheduler.program(key)

    # --- decisions ----------------------------------------------------------------------
    def apply(self, decisions: Sequence[Decision]) -> None:
        """Apply the policy's decisions in order."""
        change = self.scheduler.gating.last_change
        if change is not self._logged_change:
            self._logged_change = change
            if change is not None:
                log.info("gating mode is now %s on every backend: %s", change.mode, change.reason)
        for decision in decisions:
            if isinstance(decision, Admit):
                self._bind(decision.program_id, decision.backend, restored=False)
            elif isinstance(decision, Restore):
                self._bind(decision.program_id, decision.backend, restored=True)
            elif isinstance(decision, Pause):
                program = self.registry.live.get(decision.program_id)
                self.metrics.pauses.inc()
                if program is not None:
                    program.paused = True
                    program.pauses += 1
                    self._save(program)
            elif isinstance(decision, MarkForPause):
                continue  # the policy turns it into a Pause when the call completes
            elif isinstance(decision, Expire):
                self.metrics.expirations.inc()
                self._terminate(decision.program_id, "expired")

    def _bind(self, key: str, backend: str, *, restored: bool) -> None:
        program = self.registry.live.get(key)
        if program is not None:
            if restored and program.paused:
                program.restores += 1
                self.metrics.restores.inc()
                if program.last_backend is not None and program.last_backend != backend:
                    program.migrations += 1
                    self.metrics.migrations.inc()
            program.paused = False
            changed = program.last_backend != backend or restored
            program.last_backend = backend
            if changed:
                self._save(program)
        self.gates.let_through(key, backend)

    def _terminate(self, key: str, reason: str) -> TrackedProgram | None:
        self.gates.fail(key, reason)
        program = self.registry.end(key, reason)
        if program is None:
            return None
        if program.anonymous:
            self.store.delete(key)
        else:
            self._save(program)
        if self.environments is not None and not program.anonymous:
            final = "release" if reason == "released" else "terminated"
            task = self._spawn(self.environments.reclaim(key, final), f"reclaim {key}")
            self._reclaims[key] = task
            task.add_done_callback(lambda done: self._forget_reclaim(key, done))
        return program

    # --- backends (PoolListener) ---------------------------------------------------------
    def backend_up(self, backend: Backend, metrics: BackendMetrics) -> None:
        capacity = int(metrics.capacity_tokens or 0)
        known = {view.name for view in self.scheduler.backend_views(self.now())}
        if backend.name not in known:
            self.apply(self.scheduler.add_backend(backend.name, capacity, self.now()))
        else:
            self.apply(self.scheduler.update_backend(
                backend.name, self.now(), healthy=True, capacity_tokens=capacity,
                kv_usage=metrics.kv_usage))

    def backend_down(self, backend: Backend, reason: str) -> None:
        self.metrics.backend_faults.labels(backend=backend.name).inc()
        known = {view.name for view in self.scheduler.backend_views(self.now())}
        if backend.name in known:
            self.apply(self.scheduler.update_backend(backend.name, self.now(), healthy=False))

    def backend_metrics(self, backend: Backend, metrics: BackendMetrics) -> None:
        self.apply(self.scheduler.update_backend(
            backend.name, self.now(), capacity_tokens=metrics.capacity_tokens,
            kv_usage=metrics.kv_usage))

    # --- time ---------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        period = self.tick_interval_s / self.time_scale
        while True:
            await asyncio.sleep(period)
            try:
                self.tick()
            except Exception:
                log.exception("policy tick failed")

    def tick(self) -> None:
        self.end_overdue_calls()
        if isinstance(self.store, GuardedStore) and self.store.degraded:
            self.store.recover()
        now = self.now()
        for key in list(self._tools_running):  # a long exec keeps its program alive
            if key in self.registry.live:
                self.apply(self.scheduler.on_activity(key, now))
            else:
                self._tools_running.pop(key, None)
        self.apply(self.scheduler.tick(now))
        self._expire_unseen()
        if self.environments is not None and self.prep_ahead and (
                self._prep_task is None or self._prep_task.done()):
            # paused programs about to be restored: start their environments now, so the
            # memory grant and the tool environment arrive together
            keys = [key for key in self.scheduler.restore_order(self.prep_ahead)
                    if key in self.registry.live and self._needs_preparation(key)]
            if keys:
                self._prep_task = self._spawn(self._prepare_ahead(keys), "prepare ahead")

    def _needs_preparation(self, key: str) -> bool:
        """Whether prepare-ahead has work for ``key``: not when it has no environment (or a
        released one), nor when its environment is already being created or ready (no task
        per tick for nothing). Idle-reclaimed, removed, failed or declared ones need it."""
        environments = self.environments
        if environments is None or not environments.has_environment(key):
            return False
        handles = environments.describe(key)
        return not handles or str(handles[0].state) not in PREPARED_STATES

    async def _prepare_ahead(self, keys: list[str]) -> None:
        """Prepare the environments of ``keys`` one after the other, each admitted first like
        an exec or a declaration (a re-creation counts against the tenant's environment cap;
        a refused one waits for a later tick). One key at a time, so each admission sees the
        environments the previous prepares created."""
        for key in keys:
            if self.environments is None or key not in self.registry.live:
                continue
            try:
                self.admit(key, environment=True)
            except APIError as refused:
                log.debug("prepare-ahead of %s refused: %s", key, refused)
                continue
            try:
                await self.environments.prepare(key)
            except Exception:
                log.exception("prepare-ahead of %s failed", key)

    def _expire_unseen(self) -> None:
        """Programs registered but never sent a request are unknown to the policy; the
        runtime expires them itself on the same idle timeout."""
        limit = time.time() - self.idle_timeout_s / self.time_scale
        for key, program in list(self.registry.live.items()):
            if program.last_activity < limit and self.scheduler.program(key) is None \
                    and key not in self._tools_running:
                self.metrics.expirations.inc()
                self._terminate(key, "expired")

    # --- persistence --------------------------------------------------------------------
    def _add_step(self, program: TrackedProgram, step: StepRecord) -> None:
        """Record a step on the timeline and in the store (the step, then the new totals)."""
        program.timeline.add(step)
        if step.tools:
            # a message's tool calls run together (ToolNode runs them concurrently), so the
            # step's tool time is one observation for each tool it named
            for name in step.tools:
                label = self.tool_times.observe(name, step.tool_s)
                self.metrics.tool_seconds.labels(tool=label).observe(step.tool_s)
        if not program.anonymous:
            self.store.save_step(program.key, step.as_dict())
        self._save(program)

    def _save(self, program: TrackedProgram) -> None:
        if program.anonymous:
            return
        view = self.scheduler.program(program.key)
        status = "terminated" if program.terminated_reason else (
            str(view.status) if view is not None else "registered")
        environments: list[dict[str, Any]] = []
        if self.environments is not None:
            environments = [as_plain_dict(handle)
                            for handle in self.environments.describe(program.key)]
        self.store.save(StoredProgram(
            key=program.key, tenant=program.tenant, program_id=program.program_id,
            status=status, phase=str(view.phase) if view is not None else None,
            backend=view.backend if view is not None else None,
            created_at=program.created_at, updated_at=time.time(),
            terminated_reason=program.terminated_reason,
            timeline_summary=program.timeline.summary(), environments=environments,
            environment_spec=program.environment_spec,
        ))


def as_plain_dict(handle: Any) -> dict[str, Any]:
    if hasattr(handle, "model_dump"):
        return dict(handle.model_dump(mode="json"))
    if hasattr(handle, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(handle)
    return dict(handle) if isinstance(handle, dict) else {"handle": str(handle)}
