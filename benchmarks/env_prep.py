"""Environment preparation hidden behind reasoning (issue 4).

An agent fleet (16 programs x 5 steps by default) reasons on a real engine twin over HTTP and
acts in tool environments that take a few seconds to become ready (the environment's main
command sleeps, then marks itself ready; the readiness check polls for the mark). Two runs:

- ``lazy``: the environment is created at the first tool call (what agents do today);
- ``early``: the environment is declared at program registration and prepared at once, so its
  start-up overlaps the first LLM call (the sidecar's asynchronous preparation).

Reported: the time agents spent waiting for their environment, and steps per minute.

    .venv/bin/python -m benchmarks.env_prep [--programs 16] [--steps 5] [--ready-s 3 8]
        [--provider local|docker] [--time-scale 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from thunder_middleware.launch import running, start_twin
from thunder_middleware.tools import EnvironmentManager, ManagerConfig, make_provider, parse_spec

RESULTS = Path(__file__).parent / "results"
SYSTEM_PROMPT = "You are a careful software agent. Think, then call one tool. " * 250
TEST_IMAGE = "localhost/thunder-test:latest"


@dataclass
class AgentStats:
    waited_s: float = 0.0
    steps: int = 0
    reasoning_s: float = 0.0
    acting_s: float = 0.0


@dataclass
class RunSummary:
    mode: str
    ready_s: float
    programs: int
    steps: int
    total_wait_s: float
    mean_wait_s: float
    max_wait_s: float
    mean_prep_s: float
    makespan_s: float
    steps_per_min: float


def environment_spec(provider: str, ready_s: float) -> dict:
    spec: dict = {
        "command": ["sh", "-c", f"sleep {ready_s} && touch /tmp/.ready && exec sleep 3600"],
        "readiness": {"command": ["test", "-f", "/tmp/.ready"], "interval_s": 0.1,
                      "timeout_s": 120},
    }
    if provider == "docker":
        spec["image"] = TEST_IMAGE
    else:  # the local provider's /tmp is the host's: mark inside the environment's directory
        spec["command"][2] = f"sleep {ready_s} && touch .ready && exec sleep 3600"
        spec["readiness"]["command"] = ["test", "-f", ".ready"]
    return spec


async def run_agent(manager: EnvironmentManager, client: httpx.AsyncClient, model: str,
                    key: str, args: argparse.Namespace, mode: str, ready_s: float,
                    seed: int) -> AgentStats:
    rng = random.Random(seed)
    stats = AgentStats()
    await manager.declare(key, parse_spec(environment_spec(args.provider, ready_s)),
                          prepare=(mode == "early"))
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Task {key}: fix the failing test."}]
    for step in range(args.steps):
        tokens = rng.randint(150, 300)
        started = time.monotonic()
        response = await client.post("/v1/chat/completions", json={
            "model": model, "messages": messages, "max_tokens": tokens, "min_tokens": tokens})
        response.raise_for_status()
        stats.reasoning_s += time.monotonic() - started
        messages.append({"role": "assistant",
                         "content": response.json()["choices"][0]["message"]["content"]})
        tool_s = rng.uniform(0.3, 1.0)
        started = time.monotonic()
        result = await manager.exec(key, f"sleep {tool_s:.2f}; echo step {step} ok",
                                    timeout_s=120)
        stats.acting_s += time.monotonic() - started
        stats.waited_s += result.waited_for_ready_s
        messages.append({"role": "user", "content": result.stdout})
        stats.steps += 1
    await manager.reclaim(key)
    return stats


async def run_fleet(mode: str, ready_s: float, args: argparse.Namespace,
                    twin_url: str) -> RunSummary:
    options = {"root": "/tmp/thunder-bench-envs"} if args.provider == "local" else {}
    manager = EnvironmentManager(make_provider(args.provider, **options),
                                 ManagerConfig(idle_timeout_s=None, max_live=args.programs))
    await manager.start()
    try:
        async with httpx.AsyncClient(base_url=twin_url, timeout=300, trust_env=False) as client:
            model = (await client.get("/v1/models")).json()["data"][0]["id"]
            started = time.monotonic()
            agents = await asyncio.gather(*(
                run_agent(manager, client, model, f"bench/{mode}-{index}", args, mode, ready_s,
                          index)
                for index in range(args.programs)))
            makespan = time.monotonic() - started
        prep_sum = manager.metrics.registry.get_sample_value(
            "thunder_tool_env_preparation_seconds_sum") or 0.0
        prep_count = manager.metrics.registry.get_sample_value(
            "thunder_tool_env_preparation_seconds_count") or 1.0
    finally:
        await manager.close()
    waits = [agent.waited_s for agent in agents]
    steps = sum(agent.steps for agent in agents)
    return RunSummary(mode=mode, ready_s=ready_s, programs=args.programs, steps=steps,
                      total_wait_s=sum(waits),
                      mean_wait_s=statistics.mean(waits), max_wait_s=max(waits),
                      mean_prep_s=prep_sum / prep_count, makespan_s=makespan,
                      steps_per_min=steps / makespan * 60)


COLUMNS = [("mode", "{}"), ("ready_s", "{:g}"), ("programs", "{}"), ("steps", "{}"),
           ("total_wait_s", "{:.1f}"),
           ("mean_wait_s", "{:.2f}"), ("max_wait_s", "{:.2f}"), ("mean_prep_s", "{:.2f}"),
           ("makespan_s", "{:.1f}"), ("steps_per_min", "{:.1f}")]


def render(summaries: list[RunSummary], args: argparse.Namespace) -> str:
    table = Table(title=f"Environment preparation ({args.provider} provider)")
    for name, _ in COLUMNS:
        table.add_column(name)
    rows = [[fmt.format(getattr(s, name)) for name, fmt in COLUMNS] for s in summaries]
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
    verdicts = []
    for lazy, early in zip(summaries[::2], summaries[1::2], strict=True):
        hidden = 1 - early.total_wait_s / lazy.total_wait_s if lazy.total_wait_s else 0.0
        verdicts.append(
            f"- ready after {lazy.ready_s:g} s: early preparation hid {hidden:.0%} of the "
            f"environment wait ({lazy.total_wait_s:.1f} s -> {early.total_wait_s:.1f} s summed "
            f"over agents) and gave {early.steps_per_min / lazy.steps_per_min:.2f}x the steps "
            "per minute."
        )
    ready = " ".join(f"{value:g}" for value in args.ready_s)
    lines = [
        "# Environment preparation hidden behind reasoning",
        "",
        f"Command: `.venv/bin/python -m benchmarks.env_prep --programs {args.programs} "
        f"--steps {args.steps} --ready-s {ready} --provider {args.provider} "
        f"--time-scale {args.time_scale:g}`",
        "",
        f"{args.programs} agents x {args.steps} steps; each step is one LLM call to a real engine "
        f"twin over HTTP (H100 + Qwen3-8B roofline, time scale {args.time_scale:g}, 150-300 "
        "output tokens, a shared ~3k-token system prompt) and one tool call (0.3-1.0 s) in the "
        f"program's environment ({args.provider} provider), which becomes ready `ready_s` "
        "seconds after it starts. `lazy` creates the environment at the first tool call; "
        "`early` declares it at registration so its preparation overlaps the first LLM call. "
        "Wait = time exec calls spent waiting for readiness (`waited_for_ready_s`), summed, "
        "mean and max per agent; prep = creation to ready. A fresh twin per run.",
        "",
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        *verdicts,
        "",
    ]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[RunSummary]:
    summaries = []
    for ready_s in args.ready_s:
        for mode in ("lazy", "early"):
            with running(start_twin(time_scale=args.time_scale)) as twin:  # fresh prefix cache
                summaries.append(await run_fleet(mode, ready_s, args, twin.url))
    return summaries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ready-s", type=float, nargs="+", default=[3.0, 8.0],
                        help="seconds until an environment is ready (one pair of runs each)")
    parser.add_argument("--provider", choices=["local", "docker"], default="local")
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    summaries = asyncio.run(main_async(args))
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.provider == "local" else f"_{args.provider}"
    (RESULTS / f"env_prep{suffix}.md").write_text(render(summaries, args))


if __name__ == "__main__":
    main()
