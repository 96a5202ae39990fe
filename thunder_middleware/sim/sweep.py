"""Named run points and grids of them: what the benchmark scripts are made of.

A :class:`RunSpec` is everything that defines one simulated run, hashable and printable, so a
sweep is just a list of them and a result can always say where it came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from thunder_middleware.sim.engines import EngineSpec
from thunder_middleware.sim.harness import HarnessConfig, ProgramSource, run_simulation
from thunder_middleware.sim.metrics import RunResult
from thunder_middleware.sim.routing import make_policy
from thunder_middleware.sim.trace import Trace, read_trace
from thunder_middleware.sim.workloads import workload

ALL_POLICIES: tuple[str, ...] = (
    "vllm", "round-robin", "least-loaded", "session-affinity", "ttl-pinning",
    "thunder-published", "thunder", "ceiling",
)
#: Per-request routers are identical to plain vLLM on one replica; skip them there.
SINGLE_REPLICA_POLICIES: tuple[str, ...] = (
    "vllm", "ttl-pinning", "thunder-published", "thunder", "ceiling",
)


@dataclass(frozen=True)
class RunSpec:
    workload: str
    policy: str
    concurrency: int
    replicas: int = 1
    steps_per_program: int = 50
    seed: int = 0
    engine: EngineSpec = field(default_factory=EngineSpec)
    #: replay this trace file instead of generating ``workload`` (``seed`` is then unused)
    trace: Path | None = None

    def label(self) -> str:
        source = f"trace {self.trace.name}" if self.trace is not None else self.workload
        return (f"{source} {self.policy} n={self.concurrency} r={self.replicas} "
                f"s={self.steps_per_program}")


@lru_cache(maxsize=4)
def _read_trace_cached(path: Path, mtime_ns: int, size: int) -> Trace:
    return read_trace(path)


def load_trace(path: Path) -> Trace:
    """``read_trace``, once per file version: every policy of a sweep replays the same one."""
    stat = path.stat()
    return _read_trace_cached(path.resolve(), stat.st_mtime_ns, stat.st_size)


def run_one(spec: RunSpec) -> RunResult:
    config = HarnessConfig(
        concurrency=spec.concurrency,
        steps_per_program=spec.steps_per_program,
        replicas=spec.replicas,
        engine=spec.engine,
    )
    source: ProgramSource = (load_trace(spec.trace) if spec.trace is not None
                             else workload(spec.workload, spec.seed))
    return run_simulation(source, make_policy(spec.policy), config)


def grid(
    workloads: Iterable[str],
    concurrencies: Iterable[int],
    replicas: Iterable[int],
    policies: Sequence[str] | None = None,
    steps_per_program: int = 50,
    seed: int = 0,
) -> list[RunSpec]:
    """Every combination; on one replica the per-request routers are left out."""
    specs = []
    for name in workloads:
        for count in replicas:
            chosen = policies or (SINGLE_REPLICA_POLICIES if count == 1 else ALL_POLICIES)
            if count == 1:
                chosen = [p for p in chosen if p in SINGLE_REPLICA_POLICIES]
            for concurrency in concurrencies:
                specs += [RunSpec(name, p, concurrency, count, steps_per_program, seed)
                          for p in chosen]
    return specs


def run_many(specs: Sequence[RunSpec], *, show_progress: bool = True) -> list[RunResult]:
    """Run each spec in turn (one core: the machines running this are shared)."""
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress, transient=True) as progress:
        task = progress.add_task("runs", total=len(specs))
        for spec in specs:
            progress.update(task, description=spec.label())
            results.append(run_one(spec))
            progress.advance(task)
    return results
