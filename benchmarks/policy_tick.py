"""Cost of the policy's periodic tick (issue 3: < 2 ms at 1,000 programs over 16 backends,
< 20 ms at 10,000), measured while a fleet of agents churns through the scheduler.

Each program loops: request (its context grows), reasoning for 2-10 s, acting (a tool) for
0.5-10 s; capacities are set so about 70 % of the contexts fit, so the waiting queue, pauses
and restores are all busy. Events run in virtual time between ticks (one per second of
virtual time); only ``tick()`` is timed, in wall time (``perf_counter_ns``) and in the
thread's CPU time (``thread_time_ns``, which leaves out time the process was descheduled on
a loaded machine). The event calls are timed too and reported as a mean per event.

    .venv/bin/python -m benchmarks.policy_tick [--ticks 300] [--programs 1000 10000]

Writes benchmarks/results/policy_tick.md and benchmarks/results/policy_tick.png.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from thunder_middleware.policy import (
    Admit,
    CallTiming,
    Decision,
    Expire,
    PolicyConfig,
    ProgramScheduler,
    Restore,
    Usage,
)

RESULTS = Path(__file__).parent / "results"
BACKENDS = 16
TICK_S = 1.0


@dataclass
class Run:
    programs: int
    cost_aware: bool
    tick_ns: list[int]
    tick_cpu_ns: list[int]
    event_ns: list[int]
    decisions: int
    queue_len_mean: float


@dataclass
class Agent:
    context: int
    running: bool = False  # a request is upstream
    held: bool = False  # a request waits at the gate


def run(programs: int, ticks: int, cost_aware: bool, seed: int) -> Run:
    rng = random.Random(seed)
    scheduler = ProgramScheduler(PolicyConfig(cost_aware=cost_aware))
    mean_context = 12_000
    capacity = int(0.7 * programs * mean_context / BACKENDS)
    events: list[tuple[float, int, str, str]] = []  # (time, seq, kind, program)
    seq = 0
    event_ns: list[int] = []
    tick_ns: list[int] = []
    tick_cpu_ns: list[int] = []
    decisions = 0
    queue_lens: list[int] = []
    agents: dict[str, Agent] = {}

    def schedule(at: float, kind: str, pid: str) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, pid))

    def apply(out: list[Decision], now: float) -> None:
        nonlocal decisions
        decisions += len(out)
        for d in out:
            agent = agents.get(d.program_id)
            if agent is None:
                continue
            if isinstance(d, Admit | Restore) and agent.held:
                agent.held, agent.running = False, True
                schedule(now + rng.uniform(2.0, 10.0), "done", d.program_id)
            elif isinstance(d, Expire):
                agents.pop(d.program_id, None)

    def timed(call: Callable[..., list[Decision]], *args: object) -> list[Decision]:
        start = time.perf_counter_ns()
        out = call(*args)
        event_ns.append(time.perf_counter_ns() - start)
        return out

    for b in range(BACKENDS):
        scheduler.add_backend(f"b{b}", capacity, 0.0)
    for i in range(programs):
        pid = f"agent-{i}"
        agents[pid] = Agent(context=rng.randint(2_000, 20_000))
        schedule(rng.uniform(0.0, 10.0), "request", pid)

    now = 0.0
    warmup = 20
    for tick_index in range(ticks + warmup):
        horizon = now + TICK_S
        while events and events[0][0] <= horizon:
            at, _, kind, pid = heapq.heappop(events)
            agent = agents.get(pid)
            if agent is None:
                continue
            if kind == "request":
                agent.context += rng.randint(200, 3_000)
                agent.held = True
                apply(timed(scheduler.on_request, pid, at, agent.context * 4, None), at)
            else:
                agent.running = False
                completion = rng.randint(150, 600)
                usage = Usage(agent.context, completion, int(agent.context * 0.9))
                timing = CallTiming(0.0, 0.05 + agent.context / 40_000, 0.05 + completion * 0.02)
                agent.context += completion
                apply(timed(scheduler.on_request_done, pid, at, usage, timing), at)
                if agent.context > 60_000:  # finished: a fresh agent takes its place
                    apply(timed(scheduler.on_release, pid, at), at)
                    agent.context = rng.randint(2_000, 20_000)
                schedule(at + rng.uniform(0.5, 10.0), "request", pid)
        now = horizon
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        out = scheduler.tick(now)
        elapsed, elapsed_cpu = time.perf_counter_ns() - start, time.thread_time_ns() - start_cpu
        apply(out, now)
        if tick_index >= warmup:
            tick_ns.append(elapsed)
            tick_cpu_ns.append(elapsed_cpu)
            queue_lens.append(len(scheduler.restore_order(programs)))
    return Run(
        programs,
        cost_aware,
        tick_ns,
        tick_cpu_ns,
        event_ns,
        decisions,
        statistics.fmean(queue_lens),
    )


def p99(values: list[int]) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--programs", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    runs = [
        run(n, args.ticks, cost_aware, args.seed)
        for n in args.programs
        for cost_aware in (False, True)
    ]
    targets = {1_000: 2.0, 10_000: 20.0}
    columns = [
        "programs",
        "cost_aware",
        "tick median ms",
        "tick p99 ms",
        "tick CPU median ms",
        "tick CPU p99 ms",
        "target ms",
        "event mean us",
        "mean queue",
        "decisions",
    ]
    table = Table(title=f"policy tick over {BACKENDS} backends ({args.ticks} ticks each)")
    for col in columns:
        table.add_column(col, justify="right")
    rows = []
    for r in runs:
        row = (
            f"{r.programs:,}",
            str(r.cost_aware),
            f"{statistics.median(r.tick_ns) / 1e6:.3f}",
            f"{p99(r.tick_ns) / 1e6:.3f}",
            f"{statistics.median(r.tick_cpu_ns) / 1e6:.3f}",
            f"{p99(r.tick_cpu_ns) / 1e6:.3f}",
            f"{targets.get(r.programs, float('nan')):g}",
            f"{statistics.fmean(r.event_ns) / 1e3:.1f}",
            f"{r.queue_len_mean:.0f}",
            f"{r.decisions:,}",
        )
        rows.append(row)
        table.add_row(*row)
    Console().print(table)

    RESULTS.mkdir(parents=True, exist_ok=True)
    header = "| " + " | ".join(columns) + " |"
    lines = [
        "# Policy tick cost",
        "",
        f"`{Path(__file__).name} --ticks {args.ticks} --programs "
        f"{' '.join(map(str, args.programs))} --seed {args.seed}`; {BACKENDS} backends, "
        "agents churning between ticks (see the script's docstring). Wall time (perf_counter) "
        "and the thread's CPU time (thread_time): on a shared machine the wall p99 includes "
        "time the process was not scheduled at all.",
        "",
        header,
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    (RESULTS / "policy_tick.md").write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        ax.hist(
            [ns / 1e6 for ns in r.tick_ns],
            bins=40,
            alpha=0.6,
            label=f"{r.programs:,} programs, cost_aware={r.cost_aware}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("tick time (ms)")
    ax.set_ylabel("ticks")
    ax.set_title(f"ProgramScheduler.tick over {BACKENDS} backends")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "policy_tick.png", dpi=120)


if __name__ == "__main__":
    main()
