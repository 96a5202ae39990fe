"""Load: 1,000 concurrent programs and 20,000 requests through one sidecar in front of twins.

Every program is a closed loop of ``requests / programs`` chat calls (short prompt growing a
little each step, ``--max-tokens`` output tokens), all programs at once, then a release.
The twins run at a high time scale so that the engine is not the bottleneck: what is
measured is the sidecar (its gate, policy, proxy and registry) at this concurrency.

By default the sidecar runs as in production: one tenant's API key on every call, and the
SQLite program store (a commit on every program state change).

Measured: requests/s over the run, errors (non-200 answers and transport failures),
latency p50/p99 per call, and the sidecar process's peak RSS, open file descriptors and
sockets sampled from /proc every 0.25 s; after the run, the programs still live (zero
expected after every release).

    .venv/bin/python -m benchmarks.load [--programs 1000] [--requests 20000] [--twins 2]

Writes benchmarks/results/load.md and benchmarks/results/load.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import platform
import statistics
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from benchmarks.proc_sampler import ProcSampler
from thunder_middleware.launch import RunningServer, start_sidecar, start_twin
from thunder_middleware.security import API_KEYS_ENV, hash_key, new_key

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _program(client: httpx.AsyncClient, url: str, index: int, steps: int,
                   max_tokens: int, latencies: list[float], errors: Counter[str]) -> None:
    program_id = f"load-{index}"
    for step in range(steps):
        body = {"model": "qwen3-8b", "program_id": program_id, "max_tokens": max_tokens,
                "min_tokens": max_tokens,
                "messages": [{"role": "user",
                              "content": f"program {index} " + "step " * (4 + step)}]}
        started = time.perf_counter()
        try:
            response = await client.post(url + "/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors[f"http {response.status_code}"] += 1
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1
    try:
        released = await client.post(url + "/programs/release", json={"program_id": program_id})
        if released.status_code != 200:
            errors[f"release {released.status_code}"] += 1
    except httpx.HTTPError as exc:
        errors[f"release {type(exc).__name__}"] += 1


async def _drive(url: str, first: int, programs: int, steps: int, max_tokens: int,
                 api_key: str | None) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    # idle connections expire client-side well before uvicorn's 5 s keep-alive timeout, so a
    # request never races the server closing the connection it reuses
    limits = httpx.Limits(max_connections=programs, max_keepalive_connections=programs,
                          keepalive_expiry=2.0)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=60), limits=limits,
                                 headers=headers) as client:
        await asyncio.gather(*(_program(client, url, i, steps, max_tokens, latencies, errors)
                               for i in range(first, first + programs)))
    return latencies, errors


def _client_process(url: str, first: int, programs: int, steps: int, max_tokens: int,
                    api_key: str | None) -> tuple[list[float], Counter[str]]:
    return asyncio.run(_drive(url, first, programs, steps, max_tokens, api_key))


def drive(url: str, programs: int, requests: int, max_tokens: int, clients: int,
          api_key: str | None) -> tuple[list[float], Counter[str], float]:
    """Split the programs over ``clients`` processes: one Python client process cannot
    keep 1,000 connections busy on its own, and the load generator must not be what limits."""
    steps = max(1, requests // programs)
    share = -(-programs // clients)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    started = time.perf_counter()
    with ProcessPoolExecutor(clients, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_client_process, url, first, min(share, programs - first),
                               steps, max_tokens, api_key)
                   for first in range(0, programs, share)]
        for future in futures:
            part_latencies, part_errors = future.result()
            latencies += part_latencies
            errors += part_errors
    return latencies, errors, time.perf_counter() - started


def live_programs(url: str, api_key: str | None) -> int:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    data = httpx.get(url + "/programs", timeout=30, headers=headers).json()["data"]
    return sum(1 for program in data if program["status"] != "terminated")


def report(args: argparse.Namespace, latencies: list[float], errors: Counter[str],
           elapsed: float, sampler: ProcSampler, leftover: int) -> dict[str, Any]:
    total = len(latencies) + sum(v for k, v in errors.items()
                                 if not k.startswith(("http", "release")))
    cpu = (sampler.samples[-1].cpu_s - sampler.samples[0].cpu_s) if sampler.samples else 0.0
    return {
        "programs (concurrent)": args.programs,
        "requests": total,
        "wall time (s)": round(elapsed, 1),
        "requests/s": round(total / elapsed, 1),
        "errors": sum(errors.values()),
        "latency p50 (ms)": round(percentile(latencies, 0.50) * 1000, 1),
        "latency p99 (ms)": round(percentile(latencies, 0.99) * 1000, 1),
        "latency mean (ms)": round(statistics.fmean(latencies) * 1000, 1) if latencies else 0,
        "sidecar CPU per request (ms)": round(cpu / max(1, total) * 1000, 2),
        "sidecar CPU-bound ceiling (requests/s per core)": round(total / cpu) if cpu else 0,
        "sidecar RSS start (MiB)": round(sampler.samples[0].rss_mib, 1) if sampler.samples
        else 0,
        "sidecar peak RSS (MiB)": round(sampler.peak_rss_mib, 1),
        "sidecar RSS end (MiB)": round(sampler.samples[-1].rss_mib, 1) if sampler.samples
        else 0,
        "sidecar peak open fds": sampler.peak_fds,
        "sidecar peak sockets": max((s.sockets for s in sampler.samples), default=0),
        "sidecar fds after the run": sampler.samples[-1].fds if sampler.samples else 0,
        "programs live after release": leftover,
    }


def write(figures: dict[str, Any], errors: Counter[str], args: argparse.Namespace,
          sampler: ProcSampler) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = Table(title="sidecar under load")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, str(value))
    Console().print(table)
    lines = [
        "# Load: concurrent programs through one sidecar",
        "",
        f"Command: `.venv/bin/python -m benchmarks.load --programs {args.programs} "
        f"--requests {args.requests} --twins {args.twins} --max-tokens {args.max_tokens} "
        f"--time-scale {args.time_scale:g} --clients {args.clients}"
        f"{'' if args.auth else ' --no-auth'}{'' if args.persist else ' --no-state-dir'}`",
        "",
        f"Sidecar: API keys {'on (Bearer, one tenant)' if args.auth else 'off'}, program "
        f"store {'SQLite (WAL) in a temp --state-dir' if args.persist else 'in memory'}.",
        "",
        f"Machine: {platform.node()} ({platform.machine()}, {platform.python_version()}); "
        "client processes, sidecar and twins share it (and other work on the machine ran "
        "at the same time), so requests/s is a floor; the sidecar's own CPU time per request "
        "(from /proc) is the figure that does not depend on the machine's load.",
        "",
        "| measure | value |", "|---|---|",
        *[f"| {key} | {value} |" for key, value in figures.items()],
        "",
        f"Errors by kind: {dict(errors) or 'none'}",
        "",
        "![sidecar RSS and fds over the run](load.png)",
    ]
    (RESULTS / "load.md").write_text("\n".join(lines) + "\n")
    fig, left = plt.subplots(figsize=(8, 4))
    times = [s.t for s in sampler.samples]
    left.plot(times, [s.rss_mib for s in sampler.samples], color="tab:blue", label="RSS (MiB)")
    left.set_xlabel("seconds")
    left.set_ylabel("RSS (MiB)", color="tab:blue")
    right = left.twinx()
    right.plot(times, [s.fds for s in sampler.samples], color="tab:orange", label="open fds")
    right.set_ylabel("open fds", color="tab:orange")
    left.set_title(f"sidecar: {args.programs} programs, {args.requests} requests")
    fig.tight_layout()
    fig.savefig(RESULTS / "load.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--programs", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--twins", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=2)
    parser.add_argument("--time-scale", type=float, default=5000.0)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--no-auth", dest="auth", action="store_false",
                        help="run without API keys (default: one tenant key, Bearer auth)")
    parser.add_argument("--no-state-dir", dest="persist", action="store_false",
                        help="keep programs in memory (default: SQLite store in a temp dir)")
    args = parser.parse_args()
    twins: list[RunningServer] = []
    sidecar: RunningServer | None = None
    try:
        twins = [start_twin(time_scale=args.time_scale) for _ in range(args.twins)]
        api_key = new_key() if args.auth else None
        flags = ["--env-provider", "none", "--metrics-interval", "1", "--no-cost-aware"]
        if args.persist:
            flags += ["--state-dir", tempfile.mkdtemp(prefix="thunder-load-state-")]
        env = {API_KEYS_ENV: f"bench:{hash_key(api_key)}"} if api_key else None
        sidecar = start_sidecar([t.url for t in twins], extra_args=flags, env=env)
        with ProcSampler(sidecar.process.pid) as sampler:
            latencies, errors, elapsed = drive(sidecar.url, args.programs, args.requests,
                                               args.max_tokens, args.clients, api_key)
            time.sleep(1.0)  # one more sample after the clients are gone
        leftover = live_programs(sidecar.url, api_key)
        write(report(args, latencies, errors, elapsed, sampler, leftover), errors, args,
              sampler)
    finally:
        for server in [sidecar, *twins]:
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()


if __name__ == "__main__":
    main()
