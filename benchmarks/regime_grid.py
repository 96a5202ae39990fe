"""The default policy over regimes it was not tuned on, against plain vLLM and the ceiling.

Profiles (H100 + Qwen3-8B, A100 + Llama-3.1-8B, 8 x H100 Qwen3-235B-A22B TP8) x KV (the
profile's own, a quarter of it) x workloads (SWE-like, OpenHands-like, router-like,
short-tool) x programs (8, 24, 48, 96) x replicas (1; 2 at 48 and 96 programs, where two
replicas still have something to share). Every point runs plain vLLM, the sidecar's default
policy (``thunder``: the gate with its self-check) and the ceiling (unlimited KV); with
``--with-gate`` also the gate alone (``thunder-gate``), to show what the self-check changes.

Columns: x plain, x ceiling (ceiling / plain), headroom captured = (thunder - plain) /
(ceiling - plain) where the ceiling is at least 1.2x plain, hit rate and p90 step latency.
The worst point is printed first, then the best, then the table.

    .venv/bin/python -m benchmarks.regime_grid [--steps 16] [--jobs 2] [--with-gate]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from thunder_middleware.sim.engines import EngineSpec
from thunder_middleware.sim.sweep import RunSpec, run_one

RESULTS = Path(__file__).parent / "results"
PROFILES = (("h100", "qwen3-8b"), ("a100", "llama-3.1-8b"), ("h100", "qwen3-235b-a22b"))
WORKLOADS = ("swe-agent", "openhands", "router", "short-tool")
PROGRAMS = (8, 24, 48, 96)
MULTI_REPLICA_PROGRAMS = (48, 96)
KV_SHARES = (1.0, 0.25)
HEADROOM_MIN_CEILING = 1.2


@dataclass(frozen=True)
class Point:
    gpu: str
    model: str
    kv_share: float
    workload: str
    programs: int
    replicas: int

    def engine(self) -> EngineSpec:
        spec = EngineSpec(gpu=self.gpu, model=self.model)
        return replace(spec, num_blocks=max(int(spec.blocks() * self.kv_share), 64))

    def label(self) -> str:
        return (f"{self.gpu}/{self.model} kv={self.kv_share:g} {self.workload} "
                f"n={self.programs} r={self.replicas}")


def points() -> list[Point]:
    out = []
    for gpu, model in PROFILES:
        for share in KV_SHARES:
            for wl in WORKLOADS:
                for n in PROGRAMS:
                    for replicas in (1, 2):
                        if replicas > 1 and n not in MULTI_REPLICA_PROGRAMS:
                            continue
                        out.append(Point(gpu, model, share, wl, n, replicas))
    return out


def run_point(args: tuple[Point, tuple[str, ...], int]) -> dict[str, object]:
    point, policies, steps = args
    row: dict[str, object] = {"point": point.label(), **point.__dict__}
    for policy in policies:
        spec = RunSpec(point.workload, policy, point.programs, replicas=point.replicas,
                       steps_per_program=steps, engine=point.engine())
        result = run_one(spec)
        row[policy] = {"steps_per_min": result.steps_per_min, "hit_rate": result.hit_rate,
                       "p90_s": result.p90_step_latency_s, "preemptions": result.preemptions}
    return row


def summarize(rows: list[dict], policy: str) -> dict[str, float]:
    """x plain for every row, and the headroom captured where the ceiling leaves room."""
    for row in rows:
        plain = row["vllm"]["steps_per_min"]
        ceiling = row["ceiling"]["steps_per_min"]
        ours = row[policy]["steps_per_min"]
        row[f"{policy}_x"] = ours / plain
        row["ceiling_x"] = ceiling / plain
        row[f"{policy}_headroom"] = (
            (ours - plain) / (ceiling - plain) if ceiling >= HEADROOM_MIN_CEILING * plain else None
        )
    xs = [row[f"{policy}_x"] for row in rows]
    heads = [row[f"{policy}_headroom"] for row in rows if row[f"{policy}_headroom"] is not None]
    return {
        "points": len(rows), "min_x": min(xs), "median_x": statistics.median(xs),
        "max_x": max(xs), "below_0.98": sum(1 for x in xs if x < 0.98),
        "headroom_points": len(heads),
        "mean_headroom": statistics.fmean(heads) if heads else float("nan"),
    }


def markdown(rows: list[dict], policies: tuple[str, ...], steps: int, wall_s: float) -> str:
    ours = [p for p in policies if p.startswith("thunder")]
    lines = [
        "# Regime grid: the default policy where it was not tuned",
        "",
        f"Virtual-time harness, {steps} steps per program slot, seed 0, vLLM defaults (8192 "
        "batched tokens, block size 16). KV share 1 = what the profile leaves at 0.9 memory "
        "utilization, 0.25 = a quarter of it. Headroom captured = (policy - plain) / (ceiling - "
        f"plain), counted where the ceiling is >= {HEADROOM_MIN_CEILING}x plain. Wall time "
        f"{wall_s / 60:.1f} min. Reproduce: `.venv/bin/python -m benchmarks.regime_grid"
        f"{' --with-gate' if 'thunder-gate' in policies else ''} --steps {steps}`.",
        "",
    ]
    for policy in ours:
        s = summarize(rows, policy)
        worst = min(rows, key=lambda r: r[f"{policy}_x"])
        best = max(rows, key=lambda r: r[f"{policy}_x"])
        lines += [
            f"**{policy}**: worst {s['min_x']:.3f}x plain ({worst['point']}), best "
            f"{s['max_x']:.3f}x ({best['point']}), median {s['median_x']:.3f}x; "
            f"{s['below_0.98']} of {s['points']} points below 0.98x; headroom captured "
            f"{s['mean_headroom']:.0%} on average over the {s['headroom_points']} points whose "
            f"ceiling is >= {HEADROOM_MIN_CEILING}x.",
            "",
        ]
    header = ["point", "plain steps/min", "x ceiling"]
    for policy in ours:
        header += [f"{policy} x plain", "headroom", "hit", "p90 s (plain)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["point"], f"{row['vllm']['steps_per_min']:.1f}", f"{row['ceiling_x']:.2f}"]
        for policy in ours:
            head = row[f"{policy}_headroom"]
            cells += [
                f"{row[f'{policy}_x']:.3f}",
                "-" if head is None else f"{head:.0%}",
                f"{row[policy]['hit_rate']:.0%}",
                f"{row[policy]['p90_s']:.0f} ({row['vllm']['p90_s']:.0f})",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], policies: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [p for p in policies if p.startswith("thunder")]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    order = sorted(range(len(rows)), key=lambda i: rows[i]["ceiling_x"])
    xs = range(len(rows))
    ax.plot(xs, [rows[i]["ceiling_x"] for i in order], "k-", lw=1, label="ceiling")
    for policy in ours:
        ax.plot(xs, [rows[i][f"{policy}_x"] for i in order], ".", label=policy)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(0.98, color="red", lw=0.8, ls="--", label="0.98x plain")
    ax.set_xlabel("grid point (sorted by the ceiling's gain)")
    ax.set_ylabel("steps/min / plain vLLM")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="steps per program slot")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--with-gate", action="store_true", help="also run the gate alone")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--limit", type=int, default=None, help="first N points (smoke run)")
    args = parser.parse_args(argv)
    policies: tuple[str, ...] = ("vllm", "thunder", "ceiling")
    if args.with_gate:
        policies = ("vllm", "thunder-gate", "thunder", "ceiling")
    todo = points()[: args.limit]
    start = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = []
        for row in pool.map(run_point, [(p, policies, args.steps) for p in todo]):
            rows.append(row)
            print(row["point"], " ".join(
                f"{p}={row[p]['steps_per_min'] / row['vllm']['steps_per_min']:.3f}"
                for p in policies if p != "vllm"), flush=True)
    wall = time.monotonic() - start
    text = markdown(rows, policies, args.steps, wall)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "regime_grid.md").write_text(text)
    (args.out / "regime_grid.json").write_text(json.dumps(rows, indent=1))
    plot(rows, policies, args.out / "regime_grid.png")


if __name__ == "__main__":
    main()
