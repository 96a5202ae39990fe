"""Soak: programs start, fail and end for a long time; then count what was left behind.

``--concurrency`` client loops run for ``--minutes`` (default 20). Each loop starts one program
at a time and picks a fate for it:

* ``complete``: 3-8 calls (some streamed), then an explicit release;
* ``abandon``: 2-5 calls, then the client vanishes without releasing (idle expiry must end it);
* ``abort-stream``: a streamed call cut after the first chunk, then a release or nothing;
* ``cut-request``: a call whose client gives up after a few ms (disconnect mid-request);
* ``environment``: register with a local tool environment, exec a command, then release or
  abandon (environments must be reclaimed either way).

Every 10 s the sidecar's RSS, fds, sockets and live programs are sampled. After the run the
script waits for the idle timeout (plus two policy ticks) and counts leftovers: live programs,
waiting requests, asyncio tasks beyond the idle baseline (from /health when the sidecar
exposes them), client connections still open to the sidecar, and environments (directories
and processes under the sidecar's THUNDER_ENV_ROOT). Zero is expected everywhere.

    .venv/bin/python -m benchmarks.soak [--minutes 20] [--concurrency 40]

Writes benchmarks/results/soak.md and benchmarks/results/soak.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from benchmarks.proc_sampler import sample
from thunder_middleware.launch import RunningServer, start_sidecar, start_twin

RESULTS = Path(__file__).parent / "results"
FATES = ["complete", "complete", "abandon", "abort-stream", "cut-request", "environment"]
IDLE_TIMEOUT_S = 8.0


def _chat(program_id: str, step: int, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "qwen3-8b", "program_id": program_id, "max_tokens": 8, "min_tokens": 8,
        "messages": [{"role": "user", "content": f"{program_id} " + "work " * (10 + 5 * step)}]}
    if stream:
        body["stream"] = True
    return body


class Soak:
    def __init__(self, url: str, rng: random.Random) -> None:
        self.url = url
        self.rng = rng
        self.fates: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.serial = 0

    def _id(self, fate: str) -> str:
        self.serial += 1
        return f"soak-{fate}-{self.serial}"

    async def _call(self, client: httpx.AsyncClient, program_id: str, step: int) -> None:
        stream = self.rng.random() < 0.3
        if stream:
            async with client.stream("POST", self.url + "/v1/chat/completions",
                                     json=_chat(program_id, step, True)) as response:
                async for _ in response.aiter_lines():
                    pass
        else:
            response = await client.post(self.url + "/v1/chat/completions",
                                         json=_chat(program_id, step))
        self.outcomes[f"call {response.status_code}"] += 1

    async def _release(self, client: httpx.AsyncClient, program_id: str) -> None:
        response = await client.post(self.url + "/programs/release",
                                     json={"program_id": program_id})
        self.outcomes[f"release {response.status_code}"] += 1

    async def one_program(self, client: httpx.AsyncClient, environments: bool) -> None:
        fate = self.rng.choice(FATES if environments else FATES[:-1])
        self.fates[fate] += 1
        program_id = self._id(fate)
        if fate in ("complete", "abandon"):
            steps = self.rng.randint(3, 8) if fate == "complete" else self.rng.randint(2, 5)
            for step in range(steps):
                await self._call(client, program_id, step)
                await asyncio.sleep(self.rng.uniform(0.05, 0.5))
            if fate == "complete":
                await self._release(client, program_id)
        elif fate == "abort-stream":
            async with client.stream("POST", self.url + "/v1/chat/completions",
                                     json={**_chat(program_id, 0, True), "max_tokens": 400,
                                           "min_tokens": 400}) as response:
                async for _ in response.aiter_lines():
                    break  # the client leaves mid-stream
            self.outcomes["stream cut"] += 1
            if self.rng.random() < 0.5:
                await self._release(client, program_id)
        elif fate == "cut-request":
            with contextlib.suppress(httpx.TimeoutException):
                await client.post(self.url + "/v1/chat/completions",
                                  json={**_chat(program_id, 0), "max_tokens": 400,
                                        "min_tokens": 400},
                                  timeout=self.rng.uniform(0.005, 0.05))
            self.outcomes["request cut"] += 1
        else:
            registered = await client.post(self.url + "/programs", json={
                "program_id": program_id, "environment": {"command": None}})
            self.outcomes[f"register {registered.status_code}"] += 1
            await self._call(client, program_id, 0)
            ran = await client.post(f"{self.url}/programs/{program_id}/exec",
                                    json={"command": "echo soak && ls", "timeout_s": 10})
            self.outcomes[f"exec {ran.status_code}"] += 1
            if self.rng.random() < 0.5:
                await self._release(client, program_id)

    async def loop(self, deadline: float, environments: bool) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            while time.monotonic() < deadline:
                try:
                    await self.one_program(client, environments)
                except httpx.HTTPError as exc:
                    self.outcomes[f"client {type(exc).__name__}"] += 1


def client_connections(port: int) -> int:
    """ESTABLISHED TCP connections whose local end is the sidecar's port (/proc/net/tcp*)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


def environments_left(root: Path) -> int:
    return sum(1 for entry in root.iterdir() if entry.is_dir()) if root.exists() else 0


def health(url: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(url + "/health", timeout=30).json()
    return data


def live_programs(url: str) -> list[dict[str, Any]]:
    data = httpx.get(url + "/programs", timeout=30).json()["data"]
    return [program for program in data if program["status"] != "terminated"]


async def run(args: argparse.Namespace, sidecar: RunningServer) -> tuple[Soak, list[Any]]:
    soak = Soak(sidecar.url, random.Random(args.seed))
    deadline = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    samples: list[Any] = []

    async def sampler() -> None:
        while time.monotonic() < deadline:
            point = sample(sidecar.process.pid, started)
            live = await asyncio.to_thread(live_programs, sidecar.url)
            samples.append((point, len(live)))
            await asyncio.sleep(10)

    watcher = asyncio.create_task(sampler())
    await asyncio.gather(*(soak.loop(deadline, args.environments)
                           for _ in range(args.concurrency)))
    watcher.cancel()
    return soak, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-environments", dest="environments", action="store_false")
    args = parser.parse_args()
    env_root = Path(tempfile.mkdtemp(prefix="thunder-soak-envs-"))
    twins: list[RunningServer] = []
    sidecar: RunningServer | None = None
    try:
        twins = [start_twin(time_scale=200.0) for _ in range(2)]
        sidecar = start_sidecar(
            [t.url for t in twins],
            extra_args=["--idle-timeout", str(IDLE_TIMEOUT_S), "--check-interval", "1",
                        "--env-provider", "local" if args.environments else "none"],
            env={"THUNDER_ENV_ROOT": str(env_root)})
        baseline = health(sidecar.url)
        soak, samples = asyncio.run(run(args, sidecar))
        time.sleep(IDLE_TIMEOUT_S + 5)  # idle expiry plus the janitor's and the policy's rounds
        after = health(sidecar.url)
        leftovers = {
            "programs live after idle expiry": len(live_programs(sidecar.url)),
            "requests waiting at a gate": after.get("waiting_requests"),
            "asyncio tasks beyond the idle baseline": (
                after["asyncio_tasks"] - baseline["asyncio_tasks"]
                if "asyncio_tasks" in after and "asyncio_tasks" in baseline
                else "not exposed"),
            "client connections open to the sidecar": client_connections(sidecar.port),
            "environments (directories) left": environments_left(env_root),
            "tracebacks in the sidecar log": sidecar.log_tail(10**9).count("Traceback"),
        }
        final = sample(sidecar.process.pid)
        write(args, soak, samples, leftovers, final, baseline, after)
    finally:
        for server in [sidecar, *twins]:
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()


def write(args: argparse.Namespace, soak: Soak, samples: list[Any], leftovers: dict[str, Any],
          final: Any, baseline: dict[str, Any], after: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    first = samples[0][0] if samples else final
    activity = {
        "minutes": args.minutes,
        "concurrent client loops": args.concurrency,
        "programs started": sum(soak.fates.values()),
        **{f"fate: {fate}": count for fate, count in sorted(soak.fates.items())},
        **{f"answer: {name}": count for name, count in sorted(soak.outcomes.items())},
        "sidecar RSS first sample / peak / end (MiB)":
            f"{first.rss_mib:.1f} / {max([s[0].rss_mib for s in samples] + [final.rss_mib]):.1f}"
            f" / {final.rss_mib:.1f}",
        "sidecar fds first sample / end": f"{first.fds} / {final.fds}",
        "sidecar sockets end": final.sockets,
    }
    console = Console()
    for title, rows in (("soak activity", activity), ("leftovers after the soak", leftovers)):
        table = Table(title=title)
        table.add_column("measure")
        table.add_column("value", justify="right")
        for key, value in rows.items():
            table.add_row(key, str(value))
        console.print(table)
    lines = [
        "# Soak: programs starting, failing and ending; then leftovers",
        "",
        f"Command: `.venv/bin/python -m benchmarks.soak --minutes {args.minutes:g} "
        f"--concurrency {args.concurrency}` (sidecar idle timeout {IDLE_TIMEOUT_S:g} s, "
        f"environments {'local provider' if args.environments else 'off'}); "
        f"machine {platform.node()}.",
        "",
        "## Activity", "", "| measure | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in activity.items()],
        "", "## Leftovers (after idle expiry)", "", "| leftover | count |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in leftovers.items()],
        "", f"/health before: tasks {baseline.get('asyncio_tasks', 'n/a')}; after: "
        f"tasks {after.get('asyncio_tasks', 'n/a')}, programs {after.get('programs')}.",
        "", "![sidecar RSS, fds and live programs over the soak](soak.png)",
    ]
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")
    if samples:
        fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
        times = [s[0].t / 60 for s in samples]
        axes[0].plot(times, [s[0].rss_mib for s in samples])
        axes[0].set_ylabel("RSS (MiB)")
        axes[1].plot(times, [s[0].fds for s in samples], color="tab:orange")
        axes[1].set_ylabel("open fds")
        axes[2].plot(times, [s[1] for s in samples], color="tab:green")
        axes[2].set_ylabel("live programs")
        axes[2].set_xlabel("minutes")
        fig.suptitle("sidecar over the soak")
        fig.tight_layout()
        fig.savefig(RESULTS / "soak.png", dpi=120)


if __name__ == "__main__":
    main()
