"""One simulated run, any policy, with policy overrides: for trying a setting before a sweep.

    .venv/bin/python -m benchmarks.point swe-agent 96 --replicas 2 --steps 20 \\
        --policy thunder --set decay_tool_halflives=8 --set lambda_min=0.8

Prints one line: steps/min, hit rate, preemptions, pauses, restores, mean and p90 step
latency, largest and mean KV imbalance between replicas, and the CPU seconds it took.
``--set`` applies to the thunder policies (PolicyConfig field names).
"""

from __future__ import annotations

import argparse
import time

from thunder_middleware.sim.harness import HarnessConfig, run_simulation
from thunder_middleware.sim.routing import ThunderPolicy, make_policy
from thunder_middleware.sim.workloads import SHAPES, workload


def _override(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, float(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(SHAPES))
    parser.add_argument("programs", type=int)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50, help="steps per program slot")
    parser.add_argument("--policy", default="thunder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", type=_override, action="append", default=[])
    args = parser.parse_args(argv)
    overrides = dict(args.overrides)
    if overrides and not args.policy.startswith("thunder"):
        parser.error("--set applies to the thunder policies only")
    if args.policy in ("thunder", "thunder-published"):
        policy = ThunderPolicy(cost_aware=args.policy == "thunder", config_overrides=overrides)
    else:
        policy = make_policy(args.policy)
        if overrides:
            parser.error(f"--set is not supported with {args.policy}")
    started = time.process_time()
    result = run_simulation(
        workload(args.workload, args.seed), policy,
        HarnessConfig(concurrency=args.programs, steps_per_program=args.steps,
                      replicas=args.replicas))
    print(f"{args.workload} programs={args.programs} replicas={args.replicas} "
          f"steps={args.steps} policy={args.policy} {overrides or ''}: "
          f"{result.steps_per_min:.1f} steps/min, hit {result.hit_rate:.1%}, "
          f"preemptions {result.preemptions}, pauses {result.pauses}, restores "
          f"{result.restores}, mean step {result.mean_step_latency_s:.1f} s, p90 "
          f"{result.p90_step_latency_s:.1f} s, imbalance max {result.max_imbalance:.2f} mean "
          f"{result.mean_imbalance:.2f}, {time.process_time() - started:.0f} CPU s")


if __name__ == "__main__":
    main()
