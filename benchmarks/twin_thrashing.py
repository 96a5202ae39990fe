"""The thrashing curve: plain vLLM (the twin alone, no scheduler) as the fleet grows.

SWE-agent-like programs on one H100 + Qwen3-8B replica, 8 to 128 at a time, virtual time.
As the programs' contexts outgrow the KV cache, each tool call's idle period lets other
requests evict the program's blocks: the hit rate falls, preemptions rise, and steps per
minute stop growing with concurrency. The ceiling (same replica, unlimited KV) is run next to
it so the gap is visible.

    .venv/bin/python -m benchmarks.twin_thrashing [--steps 50] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from thunder_middleware.sim.results import print_table, write_sweep
from thunder_middleware.sim.sweep import RunSpec, run_many

RESULTS = Path(__file__).parent / "results"
CONCURRENCY = (8, 16, 32, 64, 96, 128)
COLUMNS = (
    ("policy", "policy", "{}"),
    ("concurrency", "programs", "{}"),
    ("steps_per_min", "steps/min", "{:.1f}"),
    ("hit_rate", "hit rate", "{:.1%}"),
    ("preemptions", "preemptions", "{}"),
    ("mean_step_latency_s", "mean step s", "{:.1f}"),
    ("p90_step_latency_s", "p90 step s", "{:.1f}"),
    ("cpu_s", "CPU s", "{:.1f}"),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="steps per program slot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    specs = [RunSpec("swe-agent", policy, n, 1, args.steps, args.seed)
             for policy in ("vllm", "ceiling") for n in args.concurrency]
    results = run_many(specs)
    title = "Thrashing curve: plain vLLM on the twin (SWE-agent-like, H100 + Qwen3-8B, 1 replica)"
    notes = (
        f"Virtual-time harness, {args.steps} steps per program slot, seed {args.seed}; "
        "`ceiling` is the same replica with unlimited KV. Reproduce: "
        "`.venv/bin/python -m benchmarks.twin_thrashing`."
    )
    print_table(title, results, COLUMNS)
    path = write_sweep(results, args.out, "twin_thrashing", title, columns=COLUMNS, notes=notes)
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
