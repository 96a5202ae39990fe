"""The virtual-time harness: a discrete-event simulation of an agent fleet on engine twins.

``concurrency`` closed-loop agents (slots) each run programs back to back: send a call, wait
for its completion, run the tool for its duration, send the next call whose prompt is the
previous prompt + the model's output + the tool's observation (so prefix caching can hit).
One engine-twin core per replica steps back to back while it has work; each step's modeled
duration advances that replica's clock. A policy (:mod:`thunder_middleware.sim.routing`)
sees the same events the live sidecar sees and answers with the same decisions.

A run ends once the fleet has completed ``concurrency * steps_per_program`` steps (a slot
whose program finishes starts the next program of the workload, so concurrency stays
constant to the end; throughput is never measured on a draining tail). Everything is
deterministic for a seed: one heap ordered by (time, sequence number), no wall clock.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from thunder_middleware.policy.types import (
    Admit,
    CallTiming,
    Decision,
    Expire,
    MarkForPause,
    Pause,
    Restore,
    Usage,
)
from thunder_middleware.sim.engines import EngineSpec, build_engine
from thunder_middleware.sim.metrics import MetricsRecorder, RunResult
from thunder_middleware.sim.routing import BackendSnapshot, SimPolicy
from thunder_middleware.sim.workloads import ProgramSpec, reply_token_ids
from thunder_middleware.twin.request import EngineRequest, RequestOutput


class ProgramSource(Protocol):
    """A workload or a trace: programs by index (``None`` past a finite trace's end)."""

    @property
    def name(self) -> str: ...

    @property
    def system_prompt(self) -> tuple[int, ...]: ...

    def program(self, index: int) -> ProgramSpec | None: ...


@dataclass(frozen=True)
class HarnessConfig:
    concurrency: int
    steps_per_program: int = 50
    replicas: int = 1
    engine: EngineSpec = field(default_factory=EngineSpec)
    metrics_interval_s: float = 1.0  # how often backends' KV usage is read (and sampled)
    # The engine emits the very ids the agent appends to its next prompt (as with a real
    # model). False mimics a live twin, whose reply ids differ from the appended ones.
    engine_echoes_replies: bool = True
    max_virtual_s: float = 24 * 3600.0  # safety stop

    @property
    def step_budget(self) -> int:
        return self.concurrency * self.steps_per_program


@dataclass
class _Agent:
    """One running program and where its current step stands."""

    spec: ProgramSpec
    prompt: list[int]
    env_ready_at: float | None
    step: int = 0
    backend: str | None = None
    request_id: str = ""
    waiting: bool = False
    step_started_at: float = 0.0
    dispatched_at: float = 0.0
    first_token_at: float | None = None
    generated: int = 0  # tokens the engine produced for the current call
    reply: list[int] = field(default_factory=list)
    pinned: tuple[str, str] | None = None  # (backend, request id) of retained blocks
    pinned_at: float = 0.0
    env_waited: bool = False


def _peak_context(source: ProgramSource, sample: int = 32) -> int:
    """The largest context among the first programs: sizes the ceiling's "unlimited" KV."""
    system = len(source.system_prompt)
    peaks = [p.context_tokens(system) for i in range(sample) if (p := source.program(i))]
    return max(peaks, default=system) + 4096


class Harness:
    """One run: build it, call :meth:`run` once."""

    def __init__(self, source: ProgramSource, policy: SimPolicy, config: HarnessConfig) -> None:
        self.source = source
        self.policy = policy
        self.config = config
        names = [f"replica-{i}" for i in range(config.replicas)]
        spec = config.engine
        if policy.unlimited_kv:
            spec = spec.with_capacity(config.concurrency * _peak_context(source) * 5 // 4)
        self.engines = {name: build_engine(spec) for name in names}
        self.capacity = {name: e.stats.num_blocks * e.stats.block_size
                         for name, e in self.engines.items()}
        self.metrics = MetricsRecorder(names)
        self._busy = dict.fromkeys(names, False)
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._agents: dict[str, _Agent] = {}
        self._by_request: dict[str, _Agent] = {}
        self._next_program = 0
        self._now = 0.0
        self._done = False

    # --- event plumbing ---------------------------------------------------------------
    def _at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action, args))

    def run(self) -> RunResult:
        cpu_start = time.process_time()
        self._apply(self.policy.start(self._snapshots(), 0.0))
        for _ in range(self.config.concurrency):
            self._start_next_program(0.0)
        self._at(0.0, self._read_metrics)
        if self.policy.tick_interval_s:
            self._at(self.policy.tick_interval_s, self._tick)
        while self._heap and not self._done:
            when, _, action, args = heapq.heappop(self._heap)
            if when > self.config.max_virtual_s:
                break
            self._now = when
            action(when, *args)
        return self.metrics.summary(
            workload=self.source.name,
            policy=self.policy.name,
            concurrency=self.config.concurrency,
            duration_s=self._now,
            cpu_s=time.process_time() - cpu_start,
            busy_s=sum(e.stats.busy_time_s for e in self.engines.values()),
        )

    def _snapshots(self) -> list[BackendSnapshot]:
        snapshots = []
        for name, engine in self.engines.items():
            stats = engine.stats
            snapshots.append(BackendSnapshot(
                name, self.capacity[name], stats.kv_cache_usage, stats.num_running,
                stats.num_waiting,
            ))
        return snapshots

    # --- policy decisions -------------------------------------------------------------
    def _apply(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Admit | Restore):
                if isinstance(decision, Restore):
                    self.metrics.restores += 1
                agent = self._agents.get(decision.program_id)
                if agent is not None and agent.waiting:
                    self._dispatch(agent, decision.backend)
            elif isinstance(decision, Pause):
                self.metrics.pauses += 1
            elif isinstance(decision, MarkForPause):
                self.metrics.marks += 1
            elif isinstance(decision, Expire):
                # An agent of this harness is never idle past a timeout; if the policy says
                # so anyway, it is a policy bug worth seeing in the numbers, not hiding.
                raise RuntimeError(f"policy expired a live program: {decision}")

    def _read_metrics(self, now: float) -> None:
        snapshots = self._snapshots()
        self.metrics.record_kv(now, {s.name: s.kv_usage for s in snapshots})
        self._apply(self.policy.on_metrics(now, snapshots))
        self._at(now + self.config.metrics_interval_s, self._read_metrics)

    def _tick(self, now: float) -> None:
        self._apply(self.policy.tick(now))
        assert self.policy.tick_interval_s
        self._at(now + self.policy.tick_interval_s, self._tick)

    # --- agents -----------------------------------------------------------------------
    def _start_next_program(self, now: float) -> None:
        spec = self.source.program(self._next_program)
        self._next_program += 1
        if spec is None or not spec.steps:
            return
        prompt = [*self.source.system_prompt, *spec.task]
        env_ready_at = now + spec.setup_s if self.policy.prepares_environments else None
        agent = _Agent(spec=spec, prompt=prompt, env_ready_at=env_ready_at)
        self._agents[spec.program_id] = agent
        self._send(now, agent)

    def _send(self, now: float, agent: _Agent) -> None:
        agent.waiting = True
        agent.step_started_at = now
        agent.generated = 0
        agent.first_token_at = None
        pid = agent.spec.program_id
        self._apply(self.policy.on_request(pid, now, len(agent.prompt), self._snapshots()))

    def _dispatch(self, agent: _Agent, backend: str) -> None:
        agent.waiting = False
        agent.backend = backend
        agent.dispatched_at = self._now
        agent.request_id = f"{agent.spec.program_id}/{agent.step}"
        self._by_request[agent.request_id] = agent
        step = agent.spec.steps[agent.step]
        agent.reply = reply_token_ids(agent.spec.program_id, agent.step, step.output_tokens)
        request = EngineRequest(
            request_id=agent.request_id,
            prompt_token_ids=agent.prompt,
            max_tokens=step.output_tokens,
            output_token_ids=agent.reply if self.config.engine_echoes_replies else None,
            retain_blocks=self.policy.retains_blocks(agent.spec.program_id),
        )
        self.engines[backend].add_request(request)
        self._kick(backend, self._now)

    # --- engines ----------------------------------------------------------------------
    def _kick(self, backend: str, now: float) -> None:
        if self._busy[backend]:
            return
        engine = self.engines[backend]
        if not engine.has_unfinished_requests():
            return
        result = engine.step()
        self.metrics.engine_steps += 1
        if result.duration_s <= 0.0 and not result.outputs:
            return  # nothing schedulable now (e.g. blocks pinned); retried on the next event
        self._busy[backend] = True
        self._at(now + result.duration_s, self._step_done, backend, result.outputs)

    def _step_done(self, now: float, backend: str, outputs: list[RequestOutput]) -> None:
        # The replica stays busy while its outputs are handled, so that a request dispatched
        # by a decision made here joins the next step instead of starting one mid-way.
        for output in outputs:
            agent = self._by_request.get(output.request_id)
            if agent is None:
                continue
            if agent.first_token_at is None:
                agent.first_token_at = now
                self._release_pin(agent)
            agent.generated += len(output.new_token_ids)
            if output.finished:
                del self._by_request[output.request_id]
                self._complete(now, agent, output)
        self._busy[backend] = False
        self._kick(backend, now)

    def _complete(self, now: float, agent: _Agent, output: RequestOutput) -> None:
        self.metrics.record_call(
            output.num_prompt_tokens, output.num_cached_tokens, output.num_preemptions
        )
        usage = Usage(output.num_prompt_tokens, agent.generated, output.num_cached_tokens)
        first_token = agent.first_token_at if agent.first_token_at is not None else now
        timing = CallTiming(
            queue_wait_s=agent.dispatched_at - agent.step_started_at,
            first_token_s=first_token - agent.dispatched_at,
            total_s=now - agent.dispatched_at,
        )
        step = agent.spec.steps[agent.step]
        if self.policy.retains_blocks(agent.spec.program_id) and agent.backend is not None:
            agent.pinned = (agent.backend, agent.request_id)
            agent.pinned_at = now
            self._at(now + self.policy.retain_ttl_s(step.tool), self._expire_pin, agent,
                     agent.request_id)
        self._apply(self.policy.on_request_done(agent.spec.program_id, now, usage, timing))
        wait = 0.0
        if agent.env_ready_at is None:  # environment created on first use
            agent.env_ready_at = now + agent.spec.setup_s
        if not agent.env_waited:
            agent.env_waited = True
            wait = max(0.0, agent.env_ready_at - now)
            self.metrics.env_waits.append(wait)
        self._at(now + wait + step.tool_duration_s, self._tool_done, agent)

    def _tool_done(self, now: float, agent: _Agent) -> None:
        step = agent.spec.steps[agent.step]
        self.policy.on_tool_done(step.tool, step.tool_duration_s)
        self.metrics.record_step(now - agent.step_started_at)
        if self.metrics.steps >= self.config.step_budget:
            self._done = True
            return
        agent.prompt = [*agent.prompt, *agent.reply, *step.observation]
        agent.step += 1
        if agent.step < len(agent.spec.steps):
            self._send(now, agent)
            return
        self._release_pin(agent)
        del self._agents[agent.spec.program_id]
        self.metrics.programs_finished += 1
        self._apply(self.policy.on_release(agent.spec.program_id, now))
        self._start_next_program(now)

    # --- TTL pinning ------------------------------------------------------------------
    def _release_pin(self, agent: _Agent) -> None:
        if agent.pinned is None:
            return
        backend, request_id = agent.pinned
        agent.pinned = None
        self.engines[backend].release_retained(request_id)
        self._kick(backend, self._now)

    def _expire_pin(self, now: float, agent: _Agent, request_id: str) -> None:
        if agent.pinned is not None and agent.pinned[1] == request_id:
            self._release_pin(agent)


def run_simulation(source: ProgramSource, policy: SimPolicy, config: HarnessConfig) -> RunResult:
    """Run one fleet under one policy; see :class:`Harness`."""
    return Harness(source, policy, config).run()
