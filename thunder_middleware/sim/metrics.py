"""What one simulated run measured, collected while it runs and summarized at the end.

Kept apart from the harness so the event loop only *records*; every definition of a metric
(what counts as a step, how imbalance is measured) lives here, in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RunResult:
    """The summary of one (workload, policy, concurrency, replicas) run."""

    workload: str
    policy: str
    concurrency: int
    replicas: int
    steps: int
    duration_s: float
    steps_per_min: float
    hit_rate: float
    mean_step_latency_s: float
    p90_step_latency_s: float
    preemptions: int
    max_imbalance: float
    mean_imbalance: float
    env_wait_s: float  # mean per program that reached its first tool call
    pauses: int
    restores: int
    marks: int  # MarkForPause decisions (pause a reasoning program when its call ends)
    programs_finished: int
    engine_busy: float  # fraction of the run the replicas spent stepping (mean over replicas)
    engine_steps: int
    cpu_s: float
    kv_series: dict[str, list[float]] = field(default_factory=dict, repr=False)
    kv_times: list[float] = field(default_factory=list, repr=False)

    def row(self) -> dict[str, Any]:
        """The scalar fields, for tables and JSON."""
        data = asdict(self)
        data.pop("kv_series")
        data.pop("kv_times")
        return data


@dataclass
class MetricsRecorder:
    """Accumulates counts during a run; ``summary`` turns them into a :class:`RunResult`."""

    backends: list[str]
    prompt_tokens: int = 0
    cached_tokens: int = 0
    preemptions: int = 0
    pauses: int = 0
    restores: int = 0
    marks: int = 0
    steps: int = 0
    programs_finished: int = 0
    engine_steps: int = 0
    step_latencies: list[float] = field(default_factory=list)
    env_waits: list[float] = field(default_factory=list)
    kv_times: list[float] = field(default_factory=list)
    kv_series: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kv_series = {name: [] for name in self.backends}

    def record_call(self, prompt_tokens: int, cached_tokens: int, preemptions: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.cached_tokens += cached_tokens
        self.preemptions += preemptions

    def record_step(self, latency_s: float) -> None:
        self.steps += 1
        self.step_latencies.append(latency_s)

    def record_kv(self, now: float, usage: dict[str, float]) -> None:
        self.kv_times.append(now)
        for name in self.backends:
            self.kv_series[name].append(usage[name])

    def summary(
        self, *, workload: str, policy: str, concurrency: int, duration_s: float, cpu_s: float,
        busy_s: float = 0.0,
    ) -> RunResult:
        """``busy_s``: modeled seconds the replicas spent stepping, summed over replicas."""
        latencies = np.asarray(self.step_latencies or [0.0])
        if len(self.backends) > 1 and self.kv_times:
            matrix = np.asarray([self.kv_series[name] for name in self.backends])
            spread = matrix.max(axis=0) - matrix.min(axis=0)
            max_imbalance, mean_imbalance = float(spread.max()), float(spread.mean())
        else:
            max_imbalance = mean_imbalance = 0.0
        return RunResult(
            workload=workload,
            policy=policy,
            concurrency=concurrency,
            replicas=len(self.backends),
            steps=self.steps,
            duration_s=duration_s,
            steps_per_min=60.0 * self.steps / duration_s if duration_s > 0 else 0.0,
            hit_rate=self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
            mean_step_latency_s=float(latencies.mean()),
            p90_step_latency_s=float(np.percentile(latencies, 90)),
            preemptions=self.preemptions,
            max_imbalance=max_imbalance,
            mean_imbalance=mean_imbalance,
            env_wait_s=float(np.mean(self.env_waits)) if self.env_waits else 0.0,
            pauses=self.pauses,
            restores=self.restores,
            marks=self.marks,
            programs_finished=self.programs_finished,
            engine_busy=busy_s / (duration_s * len(self.backends)) if duration_s > 0 else 0.0,
            engine_steps=self.engine_steps,
            cpu_s=cpu_s,
            kv_series=self.kv_series,
            kv_times=self.kv_times,
        )
