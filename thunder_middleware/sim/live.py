"""The live harness: the same fleet as the virtual-time harness, over real HTTP.

Closed-loop async agents send OpenAI ``/v1/completions`` calls to a target (a twin server
directly: plain vLLM; or the sidecar in front of twins), run each tool as a sleep, and build
the next prompt exactly as the simulator does. Prompts are token-id lists on the completions
endpoint (not chat messages): the agent then controls every prompt token, so the prefix the
engine can reuse is the same in both harnesses, with no chat template in between. Each call
carries ``program_id`` in the body and asks for exactly the workload's output length
(``max_tokens = min_tokens = n``, ``ignore_eos``).

Time is scaled: the twin runs ``--time-scale k`` times faster than modeled time, tools sleep
``duration / k``, and results are reported in modeled (virtual) time, so steps per minute
are comparable with the simulator's. Preemptions and KV usage are scraped from the twins'
``/metrics`` (vLLM names).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from thunder_middleware.sim.harness import ProgramSource
from thunder_middleware.sim.metrics import MetricsRecorder, RunResult
from thunder_middleware.sim.workloads import ProgramSpec, reply_token_ids


@dataclass(frozen=True)
class LiveConfig:
    target_url: str  # where agents send their calls (a twin, or the sidecar)
    engine_urls: Sequence[str]  # the twins behind it, scraped for preemptions and KV usage
    concurrency: int
    steps_per_program: int = 10
    time_scale: float = 10.0
    policy: str = "vllm"  # label of the run ("thunder" when going through the sidecar)
    through_sidecar: bool = False  # release programs at the end; environments prepared early
    model: str | None = None
    metrics_interval_s: float = 1.0  # virtual seconds between KV samples
    request_timeout_s: float = 600.0

    @property
    def step_budget(self) -> int:
        return self.concurrency * self.steps_per_program


async def _scrape(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """Sum each sample name of a vLLM-style /metrics page (engines are one per URL)."""
    response = await client.get(f"{url}/metrics")
    response.raise_for_status()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


class LiveRun:
    """One live run; :meth:`run` returns the same :class:`RunResult` the simulator gives."""

    def __init__(self, source: ProgramSource, config: LiveConfig) -> None:
        self.source = source
        self.config = config
        self.names = [f"replica-{i}" for i in range(len(config.engine_urls))]
        self.metrics = MetricsRecorder(self.names)
        self._next_program = 0
        self._done = asyncio.Event()
        self._start = 0.0

    def _virtual_now(self) -> float:
        return (time.monotonic() - self._start) * self.config.time_scale

    async def _sleep_virtual(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds / self.config.time_scale)

    async def run(self) -> RunResult:
        limits = httpx.Limits(max_connections=self.config.concurrency + 8)
        timeout = httpx.Timeout(self.config.request_timeout_s, connect=10.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            if self.config.model is None:
                models = (await client.get(f"{self.config.target_url}/v1/models")).json()
                self._model = str(models["data"][0]["id"])
            else:
                self._model = self.config.model
            before = [await _scrape(client, url) for url in self.config.engine_urls]
            cpu_start = time.process_time()
            self._start = time.monotonic()
            agents = [asyncio.create_task(self._agent(client))
                      for _ in range(self.config.concurrency)]
            sampler = asyncio.create_task(self._sample_kv(client))
            await self._done.wait()
            duration = self._virtual_now()
            for task in [*agents, sampler]:
                task.cancel()
            await asyncio.gather(*agents, sampler, return_exceptions=True)
            after = [await _scrape(client, url) for url in self.config.engine_urls]
        self.metrics.preemptions = round(sum(
            a.get("vllm:num_preemptions_total", 0.0) - b.get("vllm:num_preemptions_total", 0.0)
            for a, b in zip(after, before, strict=True)
        ))
        return self.metrics.summary(
            workload=self.source.name, policy=self.config.policy,
            concurrency=self.config.concurrency, duration_s=duration,
            cpu_s=time.process_time() - cpu_start,
        )

    async def _sample_kv(self, client: httpx.AsyncClient) -> None:
        while True:
            pages = await asyncio.gather(*(_scrape(client, u) for u in self.config.engine_urls))
            usage = {name: page.get("vllm:kv_cache_usage_perc", 0.0)
                     for name, page in zip(self.names, pages, strict=True)}
            self.metrics.record_kv(self._virtual_now(), usage)
            await self._sleep_virtual(self.config.metrics_interval_s)

    async def _agent(self, client: httpx.AsyncClient) -> None:
        while not self._done.is_set():
            spec = self.source.program(self._next_program)
            self._next_program += 1
            if spec is None:
                return
            await self._run_program(client, spec)

    async def _run_program(self, client: httpx.AsyncClient, spec: ProgramSpec) -> None:
        started = self._virtual_now()
        env_ready_at = started + spec.setup_s if self.config.through_sidecar else None
        prompt = [*self.source.system_prompt, *spec.task]
        for index, step in enumerate(spec.steps):
            step_start = self._virtual_now()
            body = {
                "model": self._model,
                "prompt": prompt,
                "max_tokens": step.output_tokens,
                "min_tokens": step.output_tokens,
                "ignore_eos": True,
                "program_id": spec.program_id,
            }
            response = await client.post(f"{self.config.target_url}/v1/completions", json=body)
            response.raise_for_status()
            usage = response.json()["usage"]
            details = usage.get("prompt_tokens_details") or {}
            self.metrics.record_call(int(usage["prompt_tokens"]),
                                     int(details.get("cached_tokens") or 0), 0)
            now = self._virtual_now()
            wait = 0.0
            if index == 0:
                if env_ready_at is None:
                    env_ready_at = now + spec.setup_s
                wait = max(0.0, env_ready_at - now)
                self.metrics.env_waits.append(wait)
            await self._sleep_virtual(wait + step.tool_duration_s)
            self.metrics.record_step(self._virtual_now() - step_start)
            if self.metrics.steps >= self.config.step_budget:
                self._done.set()
                return
            prompt = [*prompt, *reply_token_ids(spec.program_id, index, step.output_tokens),
                      *step.observation]
        self.metrics.programs_finished += 1
        if self.config.through_sidecar:
            await client.post(f"{self.config.target_url}/programs/release",
                              json={"program_id": spec.program_id})


def run_live(source: ProgramSource, config: LiveConfig) -> RunResult:
    """Run one live fleet to its step budget (blocking; starts its own event loop)."""
    return asyncio.run(LiveRun(source, config).run())
