"""Do the two harnesses agree? One scenario, run in virtual time and live over HTTP.

The scenario is an SWE-agent-like fleet on one small twin replica (a KV cache a few
programs' contexts large, so that prefix caching and eviction both matter). It is run:

- plain vLLM: virtual harness with the ``vllm`` policy / live agents straight to the twin;
- thunder: virtual harness with the ``thunder`` policy / live agents through the sidecar
  (``--time-scale`` matching the twin's, so its check interval and decay run on model time).

Steps per minute (modeled time) and prefix-cache hit rate are reported side by side; the goal
is agreement within 10 %. The live twin's reply ids differ from the ids agents append, so the
virtual runs are made the same way (``engine_echoes_replies=False``).

    .venv/bin/python -m benchmarks.harness_agreement [--time-scale 5] [--programs 8]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from thunder_middleware.launch import running, start_sidecar, start_twin
from thunder_middleware.sim.engines import EngineSpec
from thunder_middleware.sim.harness import HarnessConfig, run_simulation
from thunder_middleware.sim.live import LiveConfig, run_live
from thunder_middleware.sim.metrics import RunResult
from thunder_middleware.sim.results import print_table
from thunder_middleware.sim.routing import make_policy
from thunder_middleware.sim.workloads import workload

RESULTS = Path(__file__).parent / "results"
COLUMNS = (
    ("policy", "policy", "{}"),
    ("steps", "steps", "{}"),
    ("steps_per_min", "steps/min", "{:.1f}"),
    ("hit_rate", "hit rate", "{:.1%}"),
    ("preemptions", "preemptions", "{}"),
    ("mean_step_latency_s", "mean step s", "{:.1f}"),
    ("duration_s", "virtual s", "{:.0f}"),
)


def agreement(virtual: RunResult, live: RunResult) -> tuple[float, float]:
    """Relative differences of live against virtual: (steps/min, hit rate)."""
    spm = live.steps_per_min / virtual.steps_per_min - 1.0 if virtual.steps_per_min else 0.0
    hit = live.hit_rate / virtual.hit_rate - 1.0 if virtual.hit_rate else 0.0
    return spm, hit


def run_pair(policy: str, args: argparse.Namespace) -> tuple[RunResult, RunResult]:
    source = workload(args.workload, args.seed)
    engine = EngineSpec(num_blocks=args.num_blocks, block_size=16)
    config = HarnessConfig(concurrency=args.programs, steps_per_program=args.steps,
                           engine=engine, engine_echoes_replies=False)
    virtual = run_simulation(source, make_policy(policy), config)
    twin = start_twin(time_scale=args.time_scale, num_gpu_blocks=args.num_blocks, block_size=16)
    with running(twin):
        live_config = LiveConfig(
            target_url=twin.url, engine_urls=[twin.url], concurrency=args.programs,
            steps_per_program=args.steps, time_scale=args.time_scale, policy=policy,
        )
        if policy == "vllm":
            live = run_live(source, live_config)
        else:
            sidecar = start_sidecar(
                [twin.url],
                extra_args=["--time-scale", str(args.time_scale), "--metrics-interval",
                            str(1.0 / args.time_scale), "--env-provider", "none"],
            )
            with running(sidecar):
                live = run_live(source, replace(live_config, target_url=sidecar.url,
                                                through_sidecar=True))
    return virtual, live


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="swe-agent")
    parser.add_argument("--programs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="steps per program slot")
    parser.add_argument("--num-blocks", type=int, default=3_000)
    parser.add_argument("--time-scale", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", nargs="+", default=["vllm", "thunder"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    lines = [
        "# Harness agreement: virtual time vs live HTTP",
        "",
        f"{args.workload}, {args.programs} programs x {args.steps} steps, one twin of "
        f"{args.num_blocks} blocks x 16 tokens (H100 + Qwen3-8B timing), time scale "
        f"{args.time_scale:g}, seed {args.seed}. Reproduce: "
        "`.venv/bin/python -m benchmarks.harness_agreement`.",
        "",
        "Live: closed-loop httpx agents send `/v1/completions` with token-id prompts, "
        "`program_id`, `max_tokens = min_tokens`, `ignore_eos`; plain vLLM goes straight to "
        f"`thunder-middleware sim --time-scale {args.time_scale:g}`, thunder through "
        f"`thunder-middleware serve --time-scale {args.time_scale:g} --metrics-interval "
        f"{1 / args.time_scale:g} --env-provider none`. Virtual: the same programs in "
        "`sim.harness` with `engine_echoes_replies=False` (the live twin's reply ids are not "
        "the ids the agents append).",
        "",
        "| policy | harness | steps/min | hit rate | preemptions | mean step s |",
        "|---|---|---|---|---|---|",
    ]
    summary = []
    for policy in args.policies:
        virtual, live = run_pair(policy, args)
        print_table(f"{policy}: virtual (first) vs live (second)", [virtual, live], COLUMNS)
        for name, result in (("virtual", virtual), ("live", live)):
            lines.append(
                f"| {policy} | {name} | {result.steps_per_min:.1f} | {result.hit_rate:.1%} | "
                f"{result.preemptions} | {result.mean_step_latency_s:.1f} |"
            )
        spm, hit = agreement(virtual, live)
        summary.append(f"- {policy}: live vs virtual steps/min {spm:+.1%}, hit rate {hit:+.1%} "
                       f"({'within' if max(abs(spm), abs(hit)) <= 0.10 else 'outside'} 10 %)")
    text = "\n".join([*lines, "", *summary]) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "harness_agreement.md").write_text(text)
    print("\n".join(summary))
    print(f"wrote {args.out / 'harness_agreement.md'}")


if __name__ == "__main__":
    main()
