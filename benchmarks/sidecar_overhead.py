"""What the sidecar's own code costs per call, apart from the network: where the added
latency of ``sidecar_latency.py`` can and cannot come from.

Four measurements, each the median of ``--repeats`` runs on this machine:

1. **The whole completion path in-process**: the sidecar app (``create_app``, fast path,
   request limits, tenant, parsing, identity, gate, policy, timeline, metrics, response)
   driven through ASGI with one part replaced: ``Proxy._post``, the upstream HTTP call,
   returns a canned vLLM answer instead of reaching the twin. A real twin is still started,
   because the app's lifespan discovers it (capacity from its /metrics). CPU per call.
2. **The policy alone**: ``on_request`` + ``on_request_done`` of ``ProgramScheduler`` with
   128 programs on one backend.
3. **A vLLM scrape's parse** of the twin's /metrics text: every line, and only the lines
   the vLLM adapter reads (``VLLM_SAMPLES``), as the adapter now does.
4. **A step record's copy**: ``StepRecord.as_dict`` against ``dataclasses.asdict``.

    .venv/bin/python -m benchmarks.sidecar_overhead [--calls 5000] [--repeats 5]

Writes benchmarks/results/sidecar_overhead.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from thunder_middleware.launch import running, start_twin
from thunder_middleware.policy import PolicyConfig, ProgramScheduler
from thunder_middleware.policy.types import CallTiming, Usage
from thunder_middleware.sidecar.app import create_app
from thunder_middleware.sidecar.backends.base import parse_samples
from thunder_middleware.sidecar.backends.vllm import VLLM_SAMPLES
from thunder_middleware.sidecar.settings import load_settings
from thunder_middleware.sidecar.timeline import StepRecord

RESULTS = Path(__file__).parent / "results"
PROGRAMS = 128
#: what the twin answers a 4-token chat call (the stub's reply)
CANNED_ANSWER = orjson.dumps({
    "id": "chatcmpl-0", "object": "chat.completion", "model": "qwen3-8b",
    "choices": [{"index": 0, "finish_reason": "length",
                 "message": {"role": "assistant", "content": "a b c d"}}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24,
              "prompt_tokens_details": {"cached_tokens": 16}},
})


def _cpu_us_per_call(run: Callable[[], object], calls: int) -> float:
    started = time.process_time()
    run()
    return (time.process_time() - started) / calls * 1e6


async def _drive_app(twin_url: str, calls: int, repeats: int) -> list[float]:
    """CPU per call of the in-process sidecar, upstream call stubbed (module docstring)."""
    app = create_app(load_settings(None, backends=[twin_url], env_provider="none"))
    async with app.router.lifespan_context(app):
        async def canned_post(url: str, body: bytes) -> tuple[int, str, bytes]:
            return 200, "application/json", CANNED_ANSWER

        app.state.proxy._post = canned_post  # the one replaced part: no network

        async def one_call(index: int) -> None:
            body = orjson.dumps({
                "model": "qwen3-8b", "max_tokens": 4, "program_id": f"bench-{index % PROGRAMS}",
                "messages": [{"role": "user", "content": f"step {index}: list files"}]})
            scope: MutableMapping[str, Any] = {
                "type": "http", "method": "POST", "path": "/v1/chat/completions",
                "headers": [(b"host", b"sidecar"), (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())],
                "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "",
                "server": ("127.0.0.1", 9000), "client": ("127.0.0.1", 50000)}
            pending = [{"type": "http.request", "body": body, "more_body": False}]
            client_stays = asyncio.Event()
            statuses: list[int] = []

            async def receive() -> MutableMapping[str, Any]:
                if pending:
                    return pending.pop()
                await client_stays.wait()  # never set: the client does not leave
                return {"type": "http.disconnect"}

            async def send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await app(scope, receive, send)
            if statuses != [200]:
                raise RuntimeError(f"the sidecar answered {statuses}")

        for index in range(500):  # warm: every program exists, caches filled
            await one_call(index)
        results = []
        for _ in range(repeats):
            started = time.process_time()
            for index in range(calls):
                await one_call(index)
            results.append((time.process_time() - started) / calls * 1e6)
        return results


def _policy_run_us(calls: int, seed: int) -> float:
    """One run: 128 programs warmed on one replica, then ``calls`` random steps."""
    scheduler = ProgramScheduler(PolicyConfig())
    now = 0.0
    scheduler.add_backend("replica", 389_744, now)
    for index in range(PROGRAMS):
        scheduler.on_request(f"p{index}", now, 200)
        scheduler.on_request_done(f"p{index}", now + 0.01, Usage(60, 4, 0),
                                  CallTiming(0.0, 0.01, 0.01))
        now += 0.01
    rng = random.Random(seed)

    def run() -> None:
        clock = now
        for step in range(calls):
            program = f"p{rng.randrange(PROGRAMS)}"
            clock += 0.016
            scheduler.on_request(program, clock, 200 + step % 50)
            scheduler.on_request_done(program, clock + 0.003, Usage(60 + step % 50, 4, 40),
                                      CallTiming(0.0, 0.003, 0.003))

    return _cpu_us_per_call(run, calls)


def _parse_us(text: str, names: tuple[str, ...] | None, repeats: int) -> list[float]:
    rounds = 200
    return [_cpu_us_per_call(lambda: [parse_samples(text, names) for _ in range(rounds)],
                             rounds) for _ in range(repeats)]


def _step_copy_us(repeats: int) -> tuple[list[float], list[float]]:
    step = StepRecord(index=3, arrival=1.7e9, queue_wait_s=0.01, backend="http://b:1",
                      outcome="ok", stream=False, prefill_s=0.2, total_s=0.2, prompt_tokens=900,
                      cached_tokens=800, completion_tokens=40, acting_s=2.0)
    rounds = 20_000
    ours = [_cpu_us_per_call(lambda: [step.as_dict() for _ in range(rounds)], rounds)
            for _ in range(repeats)]
    library = [_cpu_us_per_call(lambda: [dataclasses.asdict(step) for _ in range(rounds)],
                                rounds) for _ in range(repeats)]
    return ours, library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with running(start_twin(time_scale=200.0)) as twin:
        httpx.post(twin.url + "/v1/chat/completions", timeout=30, json={
            "model": "qwen3-8b", "max_tokens": 4,
            "messages": [{"role": "user", "content": "fill the histograms"}]})
        exposition = httpx.get(twin.url + "/metrics", timeout=10).text
        app_us = asyncio.run(_drive_app(twin.url, args.calls, args.repeats))
    ours, library = _step_copy_us(args.repeats)
    rows = [
        ("whole completion path in-process, upstream call stubbed (per call)", app_us),
        (f"policy on_request + on_request_done, {PROGRAMS} programs (per call)",
         [_policy_run_us(args.calls, seed) for seed in range(args.repeats)]),
        (f"parse the twin's /metrics, all {exposition.count(chr(10))} lines (per scrape)",
         _parse_us(exposition, None, args.repeats)),
        ("parse the twin's /metrics, VLLM_SAMPLES lines only (per scrape)",
         _parse_us(exposition, VLLM_SAMPLES, args.repeats)),
        ("StepRecord.as_dict (per step)", ours),
        ("dataclasses.asdict of the same record (per step)", library),
    ]

    table = Table(title=f"Sidecar CPU apart from the network ({args.repeats} runs)")
    for column in ("what", "median us", "min us", "max us"):
        table.add_column(column, justify="right" if column != "what" else "left")
    lines = [
        "# Sidecar CPU apart from the network",
        "",
        f"`.venv/bin/python -m benchmarks.sidecar_overhead --calls {args.calls} --repeats "
        f"{args.repeats}` on {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end. CPU time (process_time), median of the runs.",
        "",
        "The in-process row replaces one part, the upstream HTTP call (`Proxy._post` returns "
        "a canned 4-token vLLM answer); everything else is the sidecar as served, fast path "
        "included. What it leaves out is the network: uvicorn, aiohttp and the loopback "
        "hop, which `sidecar_latency.md` measures end to end.",
        "",
        "| what | median us | min us | max us |",
        "|---|---:|---:|---:|",
    ]
    for name, values in rows:
        cells = (f"{statistics.median(values):.1f}", f"{min(values):.1f}",
                 f"{max(values):.1f}")
        table.add_row(name, *cells)
        lines.append(f"| {name} | {' | '.join(cells)} |")
    Console(width=120).print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sidecar_overhead.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
