"""Policy sweeps in the virtual-time harness (H100 + Qwen3-8B replicas, vLLM defaults).

Named sweeps (run all by default, or name some):

- ``headline``: SWE-agent-like, 96 programs, 1 replica, 50 steps per program slot, every
  single-replica policy (the issue's main comparison) -> ``headline.md``.
- ``small``: the same at 24 programs (thunder must never lose to plain vLLM there).
- ``router`` / ``openhands``: those workloads at 24 and 96 programs, 1 replica.
- ``grid``: SWE-agent-like, 24-128 programs x 1, 2, 4 replicas, fewer steps per program
  (``--grid-steps``, default 20) to keep the whole script near ten CPU minutes; writes one
  table + plot per replica count and the KV-over-time plots of thunder vs session affinity.

``--trace FILE`` (from ``thunder-middleware trace save``) replays that trace's programs
instead of the SWE-agent-like workload for ``headline`` and ``small``, written as
``headline_trace`` / ``small_trace`` so the generated-workload results stay as they are.

    .venv/bin/python -m benchmarks.sweeps [headline small router openhands grid] [--trace FILE]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from thunder_middleware.sim.metrics import RunResult
from thunder_middleware.sim.results import plot_kv_over_time, print_table, write_sweep
from thunder_middleware.sim.sweep import SINGLE_REPLICA_POLICIES, RunSpec, load_trace, run_many

RESULTS = Path(__file__).parent / "results"
CONCURRENCY = (24, 48, 72, 96, 128)
MULTI_REPLICA_POLICIES = (
    "vllm", "round-robin", "least-loaded", "session-affinity", "thunder", "ceiling",
)
# the single-point sweeps also show the cache-first setting of the same scheduler
POINT_POLICIES = (*SINGLE_REPLICA_POLICIES, "thunder-cache-first")
SWEEPS = ("headline", "small", "router", "openhands", "grid")


def _notes(steps: int, extra: str = "") -> str:
    return (
        f"Virtual-time harness, H100 + Qwen3-8B replicas (vLLM defaults: 8192 batched tokens, "
        f"block size 16, KV from 0.9 memory utilization), {steps} steps per program slot "
        "(a slot starts the next program when one ends), seed 0. Steps/min is modeled time. "
        "Imbalance is the largest gap in KV usage between replicas at any sample. "
        f"{extra}Reproduce: `.venv/bin/python -m benchmarks.sweeps`."
    )


def ratios(results: Sequence[RunResult]) -> str:
    """Each policy's steps/min against plain vLLM and the ceiling at the same point."""
    lines = []
    for result in results:
        same = [r for r in results if (r.workload, r.concurrency, r.replicas)
                == (result.workload, result.concurrency, result.replicas)]
        base = next((r for r in same if r.policy == "vllm"), None)
        ceiling = next((r for r in same if r.policy == "ceiling"), None)
        if base is None or result.policy in ("vllm",):
            continue
        text = f"- {result.workload} n={result.concurrency} r={result.replicas} " \
               f"{result.policy}: {result.steps_per_min / base.steps_per_min:.2f}x plain vLLM"
        if ceiling is not None and result.policy != "ceiling":
            text += f", {result.steps_per_min / ceiling.steps_per_min:.0%} of the ceiling"
        lines.append(text)
    return "\n".join(lines)


def single_point(name: str, workload: str, concurrency: Sequence[int], steps: int,
                 out: Path, title: str, trace: Path | None = None) -> list[RunResult]:
    extra = ""
    if trace is not None:
        replayed = load_trace(trace)
        workload, name = replayed.workload, f"{name}_trace"
        title = (f"Trace {trace.name} ({replayed.workload}), "
                 f"{'/'.join(map(str, concurrency))} programs, 1 replica")
        extra = (f"Programs replayed from the trace `{trace.name}` ({replayed.workload}, "
                 f"seed {replayed.seed}, {len(replayed.programs)} programs). ")
    specs = [RunSpec(workload, p, n, 1, steps, trace=trace) for n in concurrency
             for p in POINT_POLICIES]
    results = run_many(specs)
    print_table(title, results)
    summary = ratios(results)
    print(summary)
    short = [r for r in results if r.steps < r.concurrency * steps]
    if short:  # a finite trace ran out of programs before the step budget
        print(f"warning: the trace ran out before the step budget in {len(short)} run(s) "
              f"(fewest steps {min(r.steps for r in short)} of "
              f"{short[0].concurrency * steps}); save it with more --programs")
    write_sweep(results, out, name, title, notes=_notes(steps, extra) + "\n\n" + summary,
                plot=len(concurrency) > 1)
    return results


def replica_grid(steps: int, out: Path, concurrency: Sequence[int]) -> list[RunResult]:
    everything: list[RunResult] = []
    for replicas in (1, 2, 4):
        policies = SINGLE_REPLICA_POLICIES if replicas == 1 else MULTI_REPLICA_POLICIES
        specs = [RunSpec("swe-agent", p, n, replicas, steps) for n in concurrency
                 for p in policies]
        results = run_many(specs)
        title = f"SWE-agent-like, {replicas} replica(s), {steps} steps per program slot"
        print_table(title, results)
        summary = ratios(results)
        write_sweep(results, out, f"grid_r{replicas}", title,
                    notes=_notes(steps, "Fewer steps than the headline to bound CPU time. ")
                    + "\n\n" + summary)
        if replicas > 1:
            pair = [r for r in results if r.concurrency == 96
                    and r.policy in ("session-affinity", "thunder")]
            if pair:
                plot_kv_over_time(pair, out / f"kv_over_time_r{replicas}.png",
                                  f"KV use per replica, 96 programs, {replicas} replicas")
        everything += results
    return everything


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="*", help=f"any of {', '.join(SWEEPS)} (default all)")
    parser.add_argument("--steps", type=int, default=50, help="steps per slot, point sweeps")
    parser.add_argument("--grid-steps", type=int, default=20, help="steps per slot, grid")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--trace", type=Path, default=None, metavar="FILE",
                        help="replay this trace for headline/small instead of the workload")
    args = parser.parse_args(argv)
    start = time.process_time()
    chosen = args.sweeps or list(SWEEPS)
    unknown = sorted(set(chosen) - set(SWEEPS))
    if unknown:
        parser.error(f"unknown sweep(s) {unknown}; choose from {list(SWEEPS)}")
    if args.trace is not None:
        if not {"headline", "small"} & set(chosen):
            parser.error("--trace applies to the headline and small sweeps only")
        try:
            load_trace(args.trace)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            parser.error(f"cannot read the trace {args.trace}: {error}")
    if "headline" in chosen:
        single_point("headline", "swe-agent", [96], args.steps, args.out,
                     "SWE-agent-like, 96 programs, 1 replica", args.trace)
    if "small" in chosen:
        single_point("small", "swe-agent", [24], args.steps, args.out,
                     "SWE-agent-like, 24 programs, 1 replica", args.trace)
    if "router" in chosen:
        single_point("router", "router", [24, 96], args.steps, args.out,
                     "Router-like (ToolOrchestra shape), 1 replica")
    if "openhands" in chosen:
        single_point("openhands", "openhands", [24, 96], min(args.steps, 30), args.out,
                     "OpenHands-like, 1 replica")
    if "grid" in chosen:
        replica_grid(args.grid_steps, args.out, args.concurrency)
    print(f"CPU time: {time.process_time() - start:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
