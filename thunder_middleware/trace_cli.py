"""``thunder-middleware trace save|show``: workload traces from the command line.

``save`` writes a seeded workload's first programs as a JSON-lines trace
(:mod:`thunder_middleware.sim.trace`), which the harness and ``benchmarks.sweeps --trace``
replay exactly; ``show`` summarizes a trace file. This module sits outside ``sim/`` on
purpose: importing anything in that package runs its ``__init__`` (harness, policy,
numpy), and every ``thunder-middleware`` command would pay for it at start. The sim imports
are inside the command functions instead, like the other subcommands' heavy imports.

Bad input (an unknown workload, a missing or corrupt file) exits with status 2 and one line
on stderr, never a traceback.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from thunder_middleware.sim.trace import Trace

trace_app = typer.Typer(
    help="Workload traces: `trace save` writes one, `trace show` summarizes one.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(2)


def _p90(values: Sequence[float]) -> float:
    import numpy as np

    return float(np.percentile(values, 90))


def _totals(trace: Trace) -> tuple[int, int, float]:
    """(steps, tokens, mean tool seconds). Tokens: the system prompt once, plus every
    program's task, model outputs and tool observations (what the trace holds)."""
    steps = [s for p in trace.programs for s in p.steps]
    tokens = len(trace.system_prompt) + sum(
        len(p.task) + sum(s.output_tokens + len(s.observation) for s in p.steps)
        for p in trace.programs
    )
    mean_tool = statistics.fmean(s.tool_duration_s for s in steps) if steps else 0.0
    return len(steps), tokens, mean_tool


def _load(path: Path) -> Trace:
    """Read a trace, turning every way a file can be wrong into one line and exit 2."""
    from thunder_middleware.sim.trace import read_trace

    if path.is_file() and path.stat().st_size == 0:
        raise _fail(f"{path} is empty, not a trace")
    try:
        return read_trace(path)
    except FileNotFoundError:
        raise _fail(f"no such trace file: {path}") from None
    except IsADirectoryError:
        raise _fail(f"{path} is a directory, not a trace file") from None
    except OSError as error:
        raise _fail(f"cannot read {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise _fail(f"{path}: not a trace (a line is not JSON: {error.msg})") from None
    except KeyError as error:
        raise _fail(f"{path}: not a trace (a record lacks the field {error})") from None
    except (ValueError, TypeError, AttributeError) as error:
        # read_trace's own "not a thunder-trace/1 file", a non-object line, a bad number...
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        own = text.startswith(f"{path}: ")
        raise _fail(text if own else f"{path}: not a trace ({text})") from None


@trace_app.command("save")
def save(
    workload: str = typer.Option(
        ..., "--workload", help="swe-agent, openhands, router or short-tool."),
    programs: int = typer.Option(..., "--programs", help="How many programs to write."),
    seed: int = typer.Option(0, "--seed", help="Workload seed."),
    out: Path = typer.Option(..., "--out", help="The JSON-lines file to write."),
) -> None:
    """Write the first PROGRAMS programs of a seeded workload as a JSON-lines trace."""
    from thunder_middleware.sim.trace import Trace, write_trace
    from thunder_middleware.sim.workloads import SHAPES
    from thunder_middleware.sim.workloads import workload as make_workload

    if workload not in SHAPES:
        raise _fail(f"unknown workload {workload!r}; choose from {', '.join(sorted(SHAPES))}")
    if programs < 1:
        raise _fail(f"--programs must be at least 1 (got {programs})")
    trace = Trace.from_workload(make_workload(workload, seed), programs)
    try:
        write_trace(trace, out)
    except OSError as error:
        raise _fail(f"cannot write {out}: {error.strerror or error}") from None
    steps, tokens, mean_tool = _totals(trace)
    typer.echo(f"wrote {out}: {workload} seed {seed}, {programs} programs, {steps} steps, "
               f"{tokens:,} tokens, mean tool {mean_tool:.2f} s")


@trace_app.command("show")
def show(path: Path = typer.Argument(..., help="A trace written by `trace save`.")) -> None:
    """Summarize a trace: program lengths, context peaks, tool times per tool."""
    from rich.console import Console
    from rich.table import Table

    trace = _load(path)
    system = len(trace.system_prompt)
    lengths = [len(p.steps) for p in trace.programs]
    peaks = [p.context_tokens(system) if p.steps else system + len(p.task)
             for p in trace.programs]
    steps, tokens, mean_tool = _totals(trace)
    durations = [s.tool_duration_s for p in trace.programs for s in p.steps]

    summary = Table(title=f"{path.name}: {trace.workload}, seed {trace.seed}",
                    show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("programs", str(len(trace.programs)))
    summary.add_row("steps", f"{steps:,}")
    summary.add_row("tokens", f"{tokens:,}")
    summary.add_row("system prompt", f"{system:,} tokens")
    if lengths:
        summary.add_row("steps per program (min / median / max)",
                        f"{min(lengths)} / {statistics.median(lengths):g} / {max(lengths)}")
        summary.add_row("context peak (median / max)",
                        f"{statistics.median(peaks):,.0f} / {max(peaks):,} tokens")
    if durations:
        summary.add_row("tool time (mean / p90)", f"{mean_tool:.2f} / {_p90(durations):.2f} s")

    tools = Table(title="per tool")
    tools.add_column("tool")
    for column in ("calls", "share", "mean s", "p90 s"):
        tools.add_column(column, justify="right")
    by_tool: dict[str, list[float]] = {}
    for program in trace.programs:
        for step in program.steps:
            by_tool.setdefault(step.tool, []).append(step.tool_duration_s)
    for name, times in sorted(by_tool.items(), key=lambda item: -len(item[1])):
        tools.add_row(name, str(len(times)), f"{len(times) / len(durations):.0%}",
                      f"{statistics.fmean(times):.2f}", f"{_p90(times):.2f}")

    console = Console()
    console.print(summary)
    if by_tool:
        console.print(tools)
