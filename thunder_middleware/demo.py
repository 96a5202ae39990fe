"""``thunder-middleware demo``: the same agent fleet, straight to a replica and through the sidecar.

Everything is real except the GPU: engine twins (vLLM-like OpenAI servers with a paged,
prefix-cached KV cache on an H100 + Qwen3-8B time model), the sidecar, and LangGraph agents
over HTTP. The twin's KV cache is made small on purpose, so that the fleet's contexts do not
fit at once: the situation in which plain vLLM thrashes. Each run gets a fresh twin so no
cache state leaks from one to the other.
"""

from __future__ import annotations

import asyncio
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from thunder_middleware.launch import RunningServer, start_sidecar, start_twin
from thunder_middleware.sidecar.backends.base import parse_samples
from thunder_middleware.sidecar.backends.vllm import vllm_metrics

if TYPE_CHECKING:  # LangChain is heavy: only the demo itself pays for importing it
    from thunder_middleware.demo_fleet import FleetResult, FleetShape


# Enough blocks that no context of the fleet is ever evicted: the no-thrashing bound.
UNLIMITED_BLOCKS = 200_000


@dataclass
class RunReport:
    """One row of the side-by-side table."""

    name: str
    fleet: FleetResult
    time_scale: float
    hit_rate: float
    preemptions: float
    pauses: float = 0.0

    @property
    def modeled_minutes(self) -> float:
        return self.fleet.wall_s * self.time_scale / 60.0

    @property
    def steps_per_minute(self) -> float:
        return self.fleet.steps / self.modeled_minutes if self.modeled_minutes else 0.0

    @property
    def median_step_s(self) -> float:
        latencies = self.fleet.step_latencies_s
        return statistics.median(latencies) * self.time_scale if latencies else 0.0


def _twin_counters(twin: RunningServer) -> tuple[float, float]:
    metrics = vllm_metrics(parse_samples(httpx.get(twin.url + "/metrics").text), None)
    return metrics.prefix_hit_rate or 0.0, metrics.preemptions or 0.0


def _sidecar_pauses(sidecar: RunningServer) -> float:
    samples = parse_samples(httpx.get(sidecar.url + "/metrics").text)
    return samples.get("thunder_sidecar_pauses_total") or 0.0


def _served_model(twin: RunningServer) -> str:
    return str(httpx.get(twin.url + "/v1/models").json()["data"][0]["id"])


def _run_one(
    name: str, shape: FleetShape, blocks: int, through_sidecar: bool, progress: Progress
) -> RunReport:
    from thunder_middleware.demo_fleet import run_fleet

    task = progress.add_task(name, total=shape.agents * shape.tasks_per_agent)
    low, high = shape.tool_turns
    twin = start_twin(
        time_scale=shape.time_scale,
        num_gpu_blocks=blocks,
        extra_args=["--tool-turns", f"{low}-{high}"],
    )
    sidecar: RunningServer | None = None
    try:
        if through_sidecar:
            sidecar = start_sidecar(
                [twin.url],
                extra_args=["--time-scale", str(shape.time_scale), "--env-provider", "none"],
            )
        target = sidecar.url if sidecar else twin.url
        fleet = asyncio.run(
            run_fleet(
                shape,
                base_url=target,
                model=_served_model(twin),
                through_sidecar=through_sidecar,
                on_task_done=lambda: progress.advance(task),
            )
        )
        hit_rate, preemptions = _twin_counters(twin)
        pauses = _sidecar_pauses(sidecar) if sidecar else 0.0
        return RunReport(name, fleet, shape.time_scale, hit_rate, preemptions, pauses)
    finally:
        if sidecar:
            sidecar.stop()
        twin.stop()


def _table(reports: list[RunReport]) -> Table:
    table = Table(
        title="Same LangGraph fleet, one H100 + Qwen3-8B replica (engine twin); "
        "steps/min in modeled time"
    )
    for column in (
        "run",
        "tasks",
        "steps",
        "steps/min",
        "speed-up",
        "prefix hit rate",
        "preemptions",
        "pauses",
        "median step (s)",
        "failures",
    ):
        table.add_column(column, justify="right")
    base = reports[0].steps_per_minute or 1.0
    for report in reports:
        table.add_row(
            report.name,
            str(report.fleet.tasks),
            str(report.fleet.steps),
            f"{report.steps_per_minute:.1f}",
            f"{report.steps_per_minute / base:.2f}x",
            f"{report.hit_rate:.1%}",
            f"{report.preemptions:.0f}",
            f"{report.pauses:.0f}",
            f"{report.median_step_s:.1f}",
            str(report.fleet.failures),
        )
    return table


COLORS = ["#999999", "#e07b00", "#4a7ab5"]


def _plot(reports: list[RunReport], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = [textwrap.fill(r.name, 14) for r in reports]  # long names overlap otherwise
    left.bar(names, [r.steps_per_minute for r in reports], color=COLORS[: len(reports)])
    left.set_ylabel("agent steps per minute (modeled)")
    right.bar(names, [100 * r.hit_rate for r in reports], color=COLORS[: len(reports)])
    right.set_ylabel("prefix-cache hit rate (%)")
    right.set_ylim(0, 100)
    figure.suptitle("thunder-middleware demo: same fleet, same replica")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def demo(
    agents: int = typer.Option(24, help="Concurrent LangGraph agents."),
    tasks_per_agent: int = typer.Option(1, help="Tasks (programs) each agent runs in turn."),
    time_scale: float = typer.Option(5.0, help="Run the twin this many times faster."),
    num_gpu_blocks: int = typer.Option(7500, help="KV blocks of 16 tokens on the replica."),
    seed: int = typer.Option(0, help="Seed of tool durations and observation lengths."),
    output: Path = typer.Option(Path("demo-output"), help="Where the plot is written."),
) -> None:
    """Run the fleet straight to a twin, then through the sidecar, and compare."""
    from thunder_middleware.demo_fleet import FleetShape

    console = Console(width=max(Console().width, 118))
    shape = FleetShape(
        agents=agents, tasks_per_agent=tasks_per_agent, time_scale=time_scale, seed=seed
    )
    console.print(
        f"[bold]thunder-middleware demo[/]: {agents} LangGraph agents x {tasks_per_agent} "
        f"tasks, replica KV = {num_gpu_blocks * 16:,} tokens, time scale {time_scale:g}x"
    )
    progress = Progress(
        TextColumn("{task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        reports = [
            _run_one("plain vLLM", shape, num_gpu_blocks, False, progress),
            _run_one("thunder-middleware", shape, num_gpu_blocks, True, progress),
            _run_one("ceiling (unlimited KV)", shape, UNLIMITED_BLOCKS, False, progress),
        ]
    console.print(_table(reports))
    plot = output / "demo.png"
    _plot(reports, plot)
    console.print(f"plot written to [bold]{plot.resolve()}[/]")
