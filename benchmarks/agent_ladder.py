"""Closed-loop agents straight to an engine and through a sidecar started as a user would.

A rung is N agents; each agent makes ``--steps`` calls, each prompt the previous prompt plus
the reply plus a tool observation, with a tool pause (wall seconds, uniform in the range)
between calls. Prompts are token ids on ``/v1/completions`` (ids inside a small vocabulary,
so the same script drives the twin and real vLLM's tiny model), with a shared system
prompt. Every run draws its own ids (run seed), so no run inherits another's cache.

For each rung and seed the plain run and the sidecar run are interleaved (the order
alternates), and the sidecar is a fresh ``thunder-middleware serve --backend URL`` with no
other flag. Reported per run: steps per minute (wall), prefix-cache hit rate from the
calls' usage, engine preemptions, and the median requests waiting inside the engine and at
the sidecar's gate (``/metrics`` sampled every 0.5 s); per rung, sidecar / plain.

Engines:

- ``--engine twin`` (default): one twin started here, ``--num-gpu-blocks 1024
  --time-scale 5`` unless told otherwise;
- ``--engine-url URL``: an engine already running, e.g. real vLLM from
  ``bash scripts/real-vllm.sh serve 8100`` (ids stay inside the tiny model's vocabulary).

    .venv/bin/python -m benchmarks.agent_ladder --name twin_short --tools 0.2 1.0
    .venv/bin/python -m benchmarks.agent_ladder --name vllm --engine-url http://127.0.0.1:8100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from thunder_middleware.launch import running, start_sidecar, start_twin

RESULTS = Path(__file__).parent / "results"
VOCAB = (100, 3_900)  # inside the tiny model's byte-level BPE vocabulary


@dataclass
class Shape:
    system_tokens: int = 1_000
    task_tokens: tuple[int, int] = (100, 300)
    output_tokens: int = 32
    observation_tokens: tuple[int, int] = (100, 300)
    tool_s: tuple[float, float] = (0.5, 2.0)
    steps: int = 10


@dataclass
class RunStats:
    mode: str
    agents: int
    seed: int
    steps: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    errors: int = 0
    preemptions: float = 0.0
    engine_waiting: list[float] = field(default_factory=list)
    gate_waiting: list[float] = field(default_factory=list)
    step_latency_s: list[float] = field(default_factory=list)

    @property
    def steps_per_min(self) -> float:
        return 60.0 * self.steps / self.seconds if self.seconds else 0.0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def _ids(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(*VOCAB) for _ in range(count)]


async def _scrape(client: httpx.AsyncClient, url: str, names: tuple[str, ...]) -> dict[str, float]:
    try:
        text = (await client.get(url + "/metrics", timeout=5)).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def _agent(client: httpx.AsyncClient, url: str, model: str, shape: Shape, salt: int,
                 index: int, system: list[int], stats: RunStats) -> None:
    # sizes and tool times follow the rung's seed (the same for plain and sidecar runs);
    # the ids follow the run's salt, so no run can hit another run's cache
    rng = random.Random(f"{stats.seed}/{index}")
    ids = random.Random(f"{salt}/{index}/ids")
    prompt = system + _ids(ids, rng.randint(*shape.task_tokens))
    program = f"ladder-{salt}-{index}"
    for _ in range(shape.steps):
        started = time.monotonic()
        body = {"model": model, "prompt": prompt, "max_tokens": shape.output_tokens,
                "min_tokens": shape.output_tokens, "ignore_eos": True, "temperature": 0,
                "program_id": program}
        try:
            response = await client.post(url + "/v1/completions", json=body, timeout=600)
            response.raise_for_status()
            usage = response.json().get("usage") or {}
        except httpx.HTTPError:
            stats.errors += 1
            return
        stats.prompt_tokens += int(usage.get("prompt_tokens", 0))
        details = usage.get("prompt_tokens_details") or {}
        stats.cached_tokens += int(details.get("cached_tokens") or 0)
        tool = rng.uniform(*shape.tool_s)
        await asyncio.sleep(tool)
        stats.steps += 1
        stats.step_latency_s.append(time.monotonic() - started)
        prompt = prompt + _ids(ids, shape.output_tokens) \
            + _ids(ids, rng.randint(*shape.observation_tokens))
    with contextlib.suppress(httpx.HTTPError):
        await client.post(url + "/programs/release", json={"program_id": program}, timeout=10)


async def run_fleet(url: str, engine_url: str, model: str, shape: Shape, agents: int,
                    seed: int, salt: int, mode: str) -> RunStats:
    stats = RunStats(mode, agents, seed)
    rng = random.Random(f"{salt}/system")
    system = _ids(rng, shape.system_tokens)
    limits = httpx.Limits(max_connections=agents + 8, max_keepalive_connections=agents + 8)
    async with httpx.AsyncClient(limits=limits) as client:
        before = await _scrape(client, engine_url, ("vllm:num_preemptions_total",))
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                engine = await _scrape(client, engine_url, ("vllm:num_requests_waiting",))
                stats.engine_waiting.append(engine.get("vllm:num_requests_waiting", 0.0))
                if url != engine_url:
                    gate = await _scrape(client, url, ("thunder_sidecar_gate_waiting_requests",))
                    stats.gate_waiting.append(gate.get("thunder_sidecar_gate_waiting_requests", 0))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        start = time.monotonic()
        await asyncio.gather(*(_agent(client, url, model, shape, salt, i, system, stats)
                               for i in range(agents)))
        stats.seconds = time.monotonic() - start
        done.set()
        await sampler
        after = await _scrape(client, engine_url, ("vllm:num_preemptions_total",))
        stats.preemptions = after.get("vllm:num_preemptions_total", 0.0) - before.get(
            "vllm:num_preemptions_total", 0.0)
    return stats


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 10 else max(values or [0])


def markdown(runs: list[RunStats], args: argparse.Namespace, engine: str, wall: float) -> str:
    lines = [
        f"# Agent ladder: {args.name}",
        "",
        f"Engine: {engine}. Agents make {args.steps} calls each ({args.output} output tokens, "
        f"observations {args.observation[0]}-{args.observation[1]} tokens, a "
        f"{args.system}-token shared system prompt), tools {args.tools[0]}-{args.tools[1]} s of "
        "wall time. Sidecar: `thunder-middleware serve --backend URL`, nothing else, fresh "
        f"per run. Runs interleaved, seeds {args.seeds}, each run its own prompt ids. "
        f"Wall time {wall / 60:.1f} min. Reproduce: `.venv/bin/python -m benchmarks."
        f"agent_ladder {' '.join(args.argv)}`.",
        "",
        "| agents | seed | mode | steps/min | x plain | hit rate | preemptions | engine waiting "
        "(median) | gate waiting (median) | p90 step s | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios: dict[int, list[float]] = {}
    for run in runs:
        plain = next(r for r in runs if (r.agents, r.seed, r.mode) == (run.agents, run.seed,
                                                                       "plain"))
        ratio = run.steps_per_min / plain.steps_per_min if plain.steps_per_min else 0.0
        if run.mode == "sidecar":
            ratios.setdefault(run.agents, []).append(ratio)
        lines.append(
            f"| {run.agents} | {run.seed} | {run.mode} | {run.steps_per_min:.0f} | {ratio:.3f} | "
            f"{run.hit_rate:.1%} | {run.preemptions:.0f} | {_median(run.engine_waiting):.0f} | "
            f"{_median(run.gate_waiting) if run.mode == 'sidecar' else '-'} | "
            f"{_p90(run.step_latency_s):.2f} | {run.errors} |")
    lines += ["", "| agents | sidecar / plain, per seed | worst |", "|---|---|---|"]
    for agents, values in sorted(ratios.items()):
        lines.append(f"| {agents} | {', '.join(f'{v:.3f}' for v in values)} | {min(values):.3f} |")
    every = [v for values in ratios.values() for v in values]
    if every:
        lines += ["", f"Worst rung-seed: **{min(every):.3f}x** plain; best {max(every):.3f}x."]
    return "\n".join(lines) + "\n"


def plot(runs: list[RunStats], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, marker in (("plain", "o"), ("sidecar", "s")):
        points = [(r.agents, r.steps_per_min) for r in runs if r.mode == mode]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker, label=mode)
    ax.set_xlabel("agents")
    ax.set_ylabel("steps / min (wall)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="twin", help="result file stem: agent_ladder_NAME")
    parser.add_argument("--agents", type=int, nargs="+", default=[8, 16, 32, 48])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tools", type=float, nargs=2, default=[0.5, 2.0], metavar=("LO", "HI"))
    parser.add_argument("--system", type=int, default=1_000)
    parser.add_argument("--output", type=int, default=32)
    parser.add_argument("--observation", type=int, nargs=2, default=[100, 300])
    parser.add_argument("--engine-url", default=None, help="an engine already running")
    parser.add_argument("--model", default=None, help="model name (default: the engine's)")
    parser.add_argument("--twin-blocks", type=int, default=1024)
    parser.add_argument("--twin-time-scale", type=float, default=5.0)
    parser.add_argument("--sidecar-args", default="",
                        help="extra serve flags, for diagnosis only (the ladder's point is none)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    shape = Shape(system_tokens=args.system, output_tokens=args.output,
                  observation_tokens=tuple(args.observation), tool_s=tuple(args.tools),
                  steps=args.steps)
    twin = None
    if args.engine_url is None:
        twin = start_twin(num_gpu_blocks=args.twin_blocks, time_scale=args.twin_time_scale)
        engine_url = twin.url
        engine = (f"engine twin (H100 + Qwen3-8B profile), {args.twin_blocks} blocks of 16, "
                  f"time scale {args.twin_time_scale}")
    else:
        engine_url = args.engine_url.rstrip("/")
        engine = f"{engine_url}"
    runs: list[RunStats] = []
    start = time.monotonic()
    try:
        model = args.model or httpx.get(engine_url + "/v1/models", timeout=10).json()[
            "data"][0]["id"]
        run_index = 0
        for agents in args.agents:
            for seed in args.seeds:
                order = ("plain", "sidecar") if run_index % 2 == 0 else ("sidecar", "plain")
                run_index += 1
                for mode in order:
                    salt = seed * 1000 + agents * 10 + (0 if mode == "plain" else 1)
                    if mode == "plain":
                        stats = asyncio.run(run_fleet(engine_url, engine_url, model, shape,
                                                      agents, seed, salt, mode))
                    else:
                        flags = args.sidecar_args.split()
                        with running(start_sidecar([engine_url], extra_args=flags)) as sidecar:
                            stats = asyncio.run(run_fleet(sidecar.url, engine_url, model, shape,
                                                          agents, seed, salt, mode))
                    runs.append(stats)
                    print(f"{agents:3d} agents seed {seed} {mode:8s} "
                          f"{stats.steps_per_min:7.0f} steps/min hit {stats.hit_rate:.1%} "
                          f"preempt {stats.preemptions:.0f} errors {stats.errors}", flush=True)
    finally:
        if twin is not None:
            twin.stop()
    text = markdown(runs, args, engine, time.monotonic() - start)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"agent_ladder_{args.name}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(
        [{**asdict(r), "steps_per_min": r.steps_per_min, "hit_rate": r.hit_rate} for r in runs],
        indent=1))
    plot(runs, stem.with_suffix(".png"), args.name)


if __name__ == "__main__":
    main()
