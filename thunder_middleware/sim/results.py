"""Turning run results into what people read: markdown tables, rich tables, PNG plots, JSON.

Plots use matplotlib's Agg backend (no display on the benchmark machines).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from thunder_middleware.sim.metrics import RunResult

#: (field, header, format) of the standard result table
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("workload", "workload", "{}"),
    ("policy", "policy", "{}"),
    ("concurrency", "programs", "{}"),
    ("replicas", "replicas", "{}"),
    ("steps_per_min", "steps/min", "{:.1f}"),
    ("hit_rate", "hit rate", "{:.1%}"),
    ("mean_step_latency_s", "mean step s", "{:.1f}"),
    ("p90_step_latency_s", "p90 step s", "{:.1f}"),
    ("preemptions", "preemptions", "{}"),
    ("engine_busy", "GPU busy", "{:.0%}"),
    ("max_imbalance", "max imbalance", "{:.2f}"),
    ("env_wait_s", "env wait s", "{:.1f}"),
    ("pauses", "pauses", "{}"),
    ("restores", "restores", "{}"),
)


def _cells(result: RunResult, columns: Sequence[tuple[str, str, str]]) -> list[str]:
    row = result.row()
    return [fmt.format(row[key]) for key, _, fmt in columns]


def markdown_table(
    results: Sequence[RunResult], columns: Sequence[tuple[str, str, str]] = COLUMNS
) -> str:
    header = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cells(r, columns)) + " |" for r in results]
    return "\n".join([header, rule, *body]) + "\n"


def print_table(
    title: str, results: Sequence[RunResult], columns: Sequence[tuple[str, str, str]] = COLUMNS
) -> None:
    table = Table(title=title)
    for _, name, _ in columns:
        table.add_column(name)
    for result in results:
        table.add_row(*_cells(result, columns))
    Console(width=max(Console().width, 160)).print(table)


def write_json(results: Sequence[RunResult], path: Path) -> None:
    path.write_text(json.dumps([r.row() for r in results], indent=1) + "\n")


def plot_against_concurrency(
    results: Sequence[RunResult], path: Path, title: str
) -> None:
    """Steps/min and hit rate against the number of programs, one line per policy."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for policy in dict.fromkeys(r.policy for r in results):
        mine = sorted((r for r in results if r.policy == policy), key=lambda r: r.concurrency)
        xs = [r.concurrency for r in mine]
        style = "--" if policy == "ceiling" else "-"
        left.plot(xs, [r.steps_per_min for r in mine], style, marker="o", label=policy)
        right.plot(xs, [100 * r.hit_rate for r in mine], style, marker="o", label=policy)
    left.set(xlabel="parallel programs", ylabel="steps / min", title="throughput")
    right.set(xlabel="parallel programs", ylabel="prefix-cache hit rate (%)", title="hit rate")
    right.set_ylim(0, 101)
    left.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_kv_over_time(results: Sequence[RunResult], path: Path, title: str) -> None:
    """KV usage of each replica over time, one panel per run (e.g. thunder vs affinity)."""
    figure, axes = plt.subplots(len(results), 1, figsize=(10, 3 * len(results)), sharex=True)
    panels = axes if len(results) > 1 else [axes]
    for axis, result in zip(panels, results, strict=True):
        minutes = [t / 60 for t in result.kv_times]
        for name, series in result.kv_series.items():
            axis.plot(minutes, [100 * u for u in series], linewidth=0.8, label=name)
        axis.set(ylabel="KV in use (%)", ylim=(0, 101),
                 title=f"{result.policy}: max imbalance {result.max_imbalance:.2f}")
        axis.legend(fontsize=7, loc="lower right")
    panels[-1].set_xlabel("virtual minutes")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_sweep(
    results: Sequence[RunResult], out_dir: Path, name: str, title: str, *,
    columns: Sequence[tuple[str, str, str]] = COLUMNS, notes: str = "",
    plot: bool = True,
) -> Path:
    """``{name}.md`` (table + notes), ``{name}.json`` and, if asked, ``{name}.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = f"# {title}\n\n{notes.strip()}\n\n{markdown_table(results, columns)}"
    if plot:
        plot_against_concurrency(results, out_dir / f"{name}.png", title)
        markdown += f"\n![{title}]({name}.png)\n"
    (out_dir / f"{name}.md").write_text(markdown)
    write_json(results, out_dir / f"{name}.json")
    return out_dir / f"{name}.md"
