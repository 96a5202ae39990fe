"""Disk in use over 300 programs, with and without lifecycle collection (issue 4).

Programs run through a fleet of ``--concurrency`` slots; each declares an environment, writes
files into it over a few steps (build outputs, checkouts), and ends. With lifecycle collection
the sidecar's behaviour applies: a released program's environment is reclaimed at once, and an
abandoned one (no release, ``--abandon`` of them) after the idle timeout. Without it, nothing is
reclaimed until the end of the run (what happens when agents leave sandboxes behind). Disk in
use is the manager's own accounting (``thunder_tool_disk_bytes``), sampled every 0.2 s.

    .venv/bin/python -m benchmarks.disk_gc [--programs 300] [--concurrency 24]
        [--provider local|docker]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from thunder_middleware.tools import (
    EnvironmentManager,
    ManagerConfig,
    make_provider,
    parse_spec,
)
from thunder_middleware.tools.disk import directory_usage

RESULTS = Path(__file__).parent / "results"
LOCAL_ROOT = Path("/tmp/thunder-bench-disk")
MB = 1024 * 1024


@dataclass
class DiskRun:
    mode: str
    samples: list[tuple[float, int]] = field(default_factory=list)
    written: int = 0
    duration_s: float = 0.0
    left_at_end: int = 0  # bytes still held when the last program ended

    @property
    def peak(self) -> int:
        return max(size for _, size in self.samples)

    @property
    def mean(self) -> float:
        """Time-weighted mean of the sampled disk in use."""
        area = sum((t1 - t0) * s0 for (t0, s0), (t1, _) in zip(self.samples, self.samples[1:],
                                                              strict=False))
        span = self.samples[-1][0] - self.samples[0][0]
        return area / span if span else float(self.samples[0][1])


async def run_program(manager: EnvironmentManager, key: str, spec: dict, gc: bool,
                      abandon: bool, rng: random.Random) -> int:
    await manager.declare(key, parse_spec(spec))
    written = 0
    for step in range(rng.randint(2, 5)):
        size_kb = rng.randint(256, 1024)
        await manager.exec(key, f"head -c {size_kb * 1024} /dev/zero > out-{step}.bin",
                           timeout_s=60)
        written += size_kb * 1024
        await asyncio.sleep(rng.uniform(0.05, 0.3))  # reasoning between tool calls
    if gc and not abandon:
        await manager.reclaim(key)
    return written


async def run_mode(mode: str, args: argparse.Namespace) -> DiskRun:
    gc = mode == "lifecycle GC"
    options = {"root": LOCAL_ROOT} if args.provider == "local" else {}
    config = ManagerConfig(idle_timeout_s=args.idle_timeout if gc else None,
                           max_live=args.programs, gc_interval_s=0.2,
                           disk_interval_s=3600)  # we sample ourselves
    manager = EnvironmentManager(make_provider(args.provider, **options), config)
    await manager.start()
    spec: dict = {"workdir": "/work"}
    if args.provider == "docker":
        spec["image"] = "localhost/thunder-test:latest"
    run = DiskRun(mode)
    rng = random.Random(args.seed)
    plan = [(f"disk/{index}", rng.random() < args.abandon, rng.randrange(2**32))
            for index in range(args.programs)]
    slots = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()

    async def sampler() -> None:
        while True:
            run.samples.append((time.monotonic() - started, await manager.sample_disk()))
            await asyncio.sleep(0.2)

    async def one(key: str, abandon: bool, seed: int) -> int:
        async with slots:
            return await run_program(manager, key, spec, gc, abandon, random.Random(seed))

    sampling = asyncio.create_task(sampler())
    try:
        run.written = sum(await asyncio.gather(*(one(*item) for item in plan)))
        run.left_at_end = await manager.sample_disk()
        run.samples.append((time.monotonic() - started, run.left_at_end))
        run.duration_s = time.monotonic() - started
    finally:
        sampling.cancel()
        await manager.close()
    if args.provider == "local":
        assert directory_usage(LOCAL_ROOT) == 0, "environments left behind after close()"
    return run


def report(runs: list[DiskRun], args: argparse.Namespace, suffix: str) -> str:
    without, with_gc = runs
    table = Table(title=f"Disk in use over {args.programs} programs ({args.provider} provider)")
    columns = ["mode", "written MB", "peak MB", "mean MB", "held at end MB", "run s"]
    for column in columns:
        table.add_column(column)
    rows = [[run.mode, f"{run.written / MB:.0f}", f"{run.peak / MB:.1f}", f"{run.mean / MB:.1f}",
             f"{run.left_at_end / MB:.1f}", f"{run.duration_s:.1f}"] for run in runs]
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)
    peak_ratio, mean_ratio = without.peak / with_gc.peak, without.mean / with_gc.mean
    print(f"lifecycle GC: {peak_ratio:.1f}x less peak disk, {mean_ratio:.1f}x less on average")

    figure, axis = plt.subplots(figsize=(8, 4))
    for run in runs:
        axis.plot([t for t, _ in run.samples], [s / MB for _, s in run.samples], label=run.mode)
    axis.set_xlabel("seconds")
    axis.set_ylabel("disk in use by environments (MB)")
    axis.set_title(f"{args.programs} programs, {args.concurrency} at a time")
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / f"env_disk_gc{suffix}.png", dpi=120)
    plt.close(figure)
    return "\n".join([
        "# Disk in use with and without lifecycle collection",
        "",
        f"Command: `.venv/bin/python -m benchmarks.disk_gc --programs {args.programs} "
        f"--concurrency {args.concurrency} --provider {args.provider}`",
        "",
        f"{args.programs} programs, {args.concurrency} at a time; each writes 2-5 files of "
        "256-1024 KiB into its environment with 0.05-0.3 s of reasoning between tool calls. "
        f"With lifecycle GC, a released program's environment is reclaimed at once and the "
        f"{args.abandon:.0%} that are abandoned (never released) after the {args.idle_timeout:g} s "
        "idle timeout; without it, nothing is reclaimed until the run ends. Disk in use is the "
        f"manager's own accounting, sampled every 0.2 s (`env_disk_gc{suffix}.png`).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        f"Lifecycle GC used **{peak_ratio:.1f}x less peak disk** and {mean_ratio:.1f}x less on "
        "average (the published system: 4.2x). The ratio grows with the number of programs "
        "over the number running at once: without collection every finished program's files "
        "stay; with it only the running ones (and abandoned ones until their idle timeout) hold "
        "disk.",
        "",
        f"![disk over time](env_disk_gc{suffix}.png)",
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--abandon", type=float, default=0.2, help="share never released")
    parser.add_argument("--idle-timeout", type=float, default=2.0)
    parser.add_argument("--provider", choices=["local", "docker"], default="local")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    LOCAL_ROOT.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    runs = [asyncio.run(run_mode(mode, args)) for mode in ("no GC", "lifecycle GC")]
    suffix = "" if args.provider == "local" else f"_{args.provider}"
    (RESULTS / f"env_disk_gc{suffix}.md").write_text(report(runs, args, suffix))


if __name__ == "__main__":
    main()
