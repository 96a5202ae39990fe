"""The trace, its replay against an engine, and the per-request comparison behind
``benchmarks/vllm_vs_twin.py`` and ``tests/vllm`` (why the replay is built this way, and
what makes it fair, is said in ``vllm_vs_twin``'s docstring).

Kept apart from the script so that the tests replay exactly what the benchmark replays.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from thunder_middleware.twin import EngineConfig, EngineCore, EngineRequest

# ---- the trace ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceConfig:
    num_programs: int = 16
    turns: tuple[int, int] = (8, 10)
    system_tokens: int = 640  # shared by every program
    first_user_tokens: tuple[int, int] = (96, 320)
    output_tokens: tuple[int, int] = (16, 40)
    observation_tokens: tuple[int, int] = (64, 480)
    active_programs: int = 12  # programs started and not finished
    per_wave: int = 4  # of the active ones, how many reason in one wave
    wave_budget_fraction: float = 0.9
    token_ids: tuple[int, int] = (16, 4000)  # inside the tiny model's 4096-entry vocabulary
    seed: int = 0  # the shape: lengths, turns, schedule
    salt: str = ""  # the id values: a fresh salt per run stops hits on earlier runs


SMALL_TRACE = TraceConfig(
    num_programs=4, turns=(6, 8), observation_tokens=(600, 1000), active_programs=4, per_wave=2,
    seed=1,
)
"""Four programs whose contexts (up to 6.8k tokens) outgrow a 512 x 32 cache together: the
tests' trace. The default trace's 16 programs reach 3.8k tokens, 12 of them active at once."""


@dataclass(frozen=True)
class Turn:
    pseudo_output: tuple[int, ...]  # appended in "fixed" mode (cut to the wave's reply length)
    observation: tuple[int, ...]


@dataclass(frozen=True)
class ProgramPlan:
    first_prompt: tuple[int, ...]
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Step:
    """One request: ``program``'s ``turn``, replying ``output_tokens`` tokens."""

    program: int
    turn: int
    output_tokens: int
    prompt_tokens: int


@dataclass(frozen=True)
class Trace:
    programs: list[ProgramPlan]
    waves: list[list[Step]]

    @property
    def num_requests(self) -> int:
        return sum(len(wave) for wave in self.waves)

    @property
    def longest_prompt(self) -> int:
        return max(step.prompt_tokens for wave in self.waves for step in wave)


def _ids(rng: random.Random, count: int, bounds: tuple[int, int]) -> tuple[int, ...]:
    return tuple(rng.randrange(*bounds) for _ in range(count))


def build_programs(cfg: TraceConfig) -> list[ProgramPlan]:
    rng = random.Random(cfg.seed)  # lengths
    ids = random.Random(f"{cfg.seed}/{cfg.salt}")  # id values
    system = _ids(ids, cfg.system_tokens, cfg.token_ids)
    programs = []
    for _ in range(cfg.num_programs):
        first = system + _ids(ids, rng.randint(*cfg.first_user_tokens), cfg.token_ids)
        turns = []
        for _ in range(rng.randint(*cfg.turns)):
            observation = _ids(ids, rng.randint(*cfg.observation_tokens), cfg.token_ids)
            turns.append(Turn(_ids(ids, cfg.output_tokens[1], cfg.token_ids), observation))
        programs.append(ProgramPlan(first, tuple(turns)))
    return programs


def build_trace(cfg: TraceConfig, num_blocks: int, block_size: int) -> Trace:
    """Waves: programs join one per wave until ``active_programs`` run; each wave takes the
    ``per_wave`` active programs that reasoned least recently, leaving out one whose blocks
    would push the wave past the budget (it goes first next time).

    All replies of a wave have the same length. Continuous batching gives every running
    request one token per step, so requests that arrive in a fixed order with equal lengths
    finish, and free their blocks into the LRU queue, in that order on any engine at any
    speed; unequal lengths would let decode speed decide the eviction order."""
    programs = build_programs(cfg)
    rng = random.Random(f"{cfg.seed}/waves")
    budget = int(cfg.wave_budget_fraction * (num_blocks - 1))
    next_turn = [0] * len(programs)
    context = [len(p.first_prompt) for p in programs]
    last_run: dict[int, int] = {}
    pending = list(range(len(programs)))
    active: list[int] = []
    waves: list[list[Step]] = []
    while pending or active:
        if pending and len(active) < cfg.active_programs:
            active.append(pending.pop(0))
        output_tokens = rng.randint(*cfg.output_tokens)
        wave: list[Step] = []
        used = 0
        for program in sorted(active, key=lambda p: (last_run.get(p, -1), p)):
            if len(wave) == cfg.per_wave:
                break
            blocks = -(-(context[program] + output_tokens) // block_size)
            if blocks > budget:
                raise ValueError(f"program {program} alone exceeds the wave budget")
            if used + blocks > budget:
                continue
            used += blocks
            wave.append(Step(program, next_turn[program], output_tokens, context[program]))
        for step in wave:
            turn = programs[step.program].turns[step.turn]
            context[step.program] += output_tokens + len(turn.observation)
            last_run[step.program] = len(waves)
            next_turn[step.program] += 1
            if next_turn[step.program] == len(programs[step.program].turns):
                active.remove(step.program)
        waves.append(wave)
    return Trace(programs, waves)


# ---- replay ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    prompt_tokens: int
    cached_tokens: int
    output_ids: list[int] | None


@dataclass(frozen=True)
class RequestRecord:
    wave: int
    program: int
    turn: int
    prompt_tokens: int
    cached_tokens: int


@dataclass
class ReplayState:
    """Each program's growing context, and what every request reported."""

    trace: Trace
    returned_outputs: bool
    contexts: list[list[int]] = field(init=False)
    records: list[RequestRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.contexts = [list(p.first_prompt) for p in self.trace.programs]

    def prompt(self, step: Step) -> list[int]:
        return self.contexts[step.program]

    def record(self, wave: int, step: Step, done: Completion) -> None:
        turn = self.trace.programs[step.program].turns[step.turn]
        if not done.prompt_tokens == len(self.contexts[step.program]) == step.prompt_tokens:
            raise RuntimeError(f"{step}: engine counted {done.prompt_tokens} prompt tokens")
        output = done.output_ids if self.returned_outputs else None
        if output is None or len(output) != step.output_tokens:
            if self.returned_outputs:
                raise RuntimeError(f"{step}: expected {step.output_tokens} output ids")
            output = list(turn.pseudo_output[: step.output_tokens])
        self.records.append(
            RequestRecord(wave, step.program, step.turn, done.prompt_tokens, done.cached_tokens)
        )
        self.contexts[step.program] = self.contexts[step.program] + output + list(
            turn.observation
        )


@dataclass(frozen=True)
class CacheCounters:
    """vLLM's prefix-cache counters (tokens) and preemptions, summed over engines."""

    queries: float = 0.0
    hits: float = 0.0
    preemptions: float = 0.0

    def __sub__(self, other: CacheCounters) -> CacheCounters:
        return CacheCounters(
            self.queries - other.queries, self.hits - other.hits,
            self.preemptions - other.preemptions,
        )

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text to ``{sample name: [(labels, value)]}`` with the official parser."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def cache_counters(text: str) -> CacheCounters:
    samples = metric_samples(text)

    def total(name: str) -> float:
        return sum(value for _, value in samples.get(name, []))

    return CacheCounters(
        total("vllm:prefix_cache_queries_total"),
        total("vllm:prefix_cache_hits_total"),
        total("vllm:num_preemptions_total"),
    )


def scrape_metrics(url: str, timeout: float = 10.0) -> str:
    response = httpx.get(url.rstrip("/") + "/metrics", timeout=timeout)
    response.raise_for_status()
    return response.text


def cache_geometry(text: str) -> tuple[int, int]:
    """(num_gpu_blocks, block_size) from ``vllm:cache_config_info``'s labels."""
    for labels, _ in metric_samples(text).get("vllm:cache_config_info", []):
        return int(labels["num_gpu_blocks"]), int(labels["block_size"])
    raise ValueError("no vllm:cache_config_info in /metrics")


class HttpEngine:
    """One OpenAI-compatible engine (vLLM or the twin) driven by token-id prompts."""

    def __init__(self, name: str, url: str, client: httpx.AsyncClient) -> None:
        self.name, self.url, self.client = name, url.rstrip("/"), client
        self.model = ""

    async def connect(self) -> None:
        response = await self.client.get(self.url + "/v1/models")
        response.raise_for_status()
        self.model = response.json()["data"][0]["id"]

    async def complete(self, prompt: list[int], output_tokens: int) -> Completion:
        body = {
            "model": self.model, "prompt": prompt, "max_tokens": output_tokens,
            "min_tokens": output_tokens, "ignore_eos": True, "temperature": 0.0,
            "return_token_ids": True,
        }
        response = await self.client.post(self.url + "/v1/completions", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{self.name}: HTTP {response.status_code}: {response.text[:300]}")
        data = response.json()
        usage = data["usage"]
        details = usage.get("prompt_tokens_details") or {}
        return Completion(
            usage["prompt_tokens"], int(details.get("cached_tokens") or 0),
            data["choices"][0].get("token_ids"),
        )

    async def metrics_text(self) -> str:
        response = await self.client.get(self.url + "/metrics")
        response.raise_for_status()
        return response.text

    async def returns_token_ids(self) -> bool:
        probe = await self.complete(list(range(1, 9)), 2)
        return probe.output_ids is not None and len(probe.output_ids) == 2


@dataclass
class ReplayResult:
    engine: str
    records: list[RequestRecord]
    counters: CacheCounters
    wall_s: float


async def replay_http(
    engine: HttpEngine, trace: Trace, returned_outputs: bool, stagger_s: float
) -> ReplayResult:
    state = ReplayState(trace, returned_outputs)
    before = cache_counters(await engine.metrics_text())
    start = time.perf_counter()
    for index, wave in enumerate(trace.waves):
        tasks = []
        for step in wave:
            prompt = list(state.prompt(step))
            tasks.append(asyncio.create_task(engine.complete(prompt, step.output_tokens)))
            await asyncio.sleep(stagger_s)  # fixes the arrival order inside the wave
        for step, done in zip(wave, await asyncio.gather(*tasks), strict=True):
            state.record(index, step, done)
    wall = time.perf_counter() - start
    counters = cache_counters(await engine.metrics_text()) - before
    return ReplayResult(engine.name, state.records, counters, wall)


def replay_core(trace: Trace, config: EngineConfig, returned_outputs: bool) -> ReplayResult:
    """The twin's engine core in-process: each arrival gets one step before the next, as a
    stagger gives each request its first scheduling before the next one arrives."""
    core = EngineCore(config)
    state = ReplayState(trace, returned_outputs)
    outputs: dict[str, list[int]] = {}
    cached: dict[str, int] = {}

    def step_core() -> None:
        for out in core.step().outputs:
            outputs.setdefault(out.request_id, []).extend(out.new_token_ids)
            cached[out.request_id] = out.num_cached_tokens

    start = time.perf_counter()
    for index, wave in enumerate(trace.waves):
        ids = [f"w{index}-p{s.program}-t{s.turn}" for s in wave]
        for request_id, step in zip(ids, wave, strict=True):
            prompt = list(state.prompt(step))
            core.add_request(EngineRequest(request_id, prompt, step.output_tokens))
            step_core()
        while core.has_unfinished_requests():
            step_core()
        for request_id, step in zip(ids, wave, strict=True):
            done = Completion(len(state.prompt(step)), cached[request_id], outputs[request_id])
            state.record(index, step, done)
    stats = core.stats
    counters = CacheCounters(
        stats.prefix_cache_queries, stats.prefix_cache_hits, stats.num_preemptions
    )
    return ReplayResult("twin core", state.records, counters, time.perf_counter() - start)


# ---- comparison --------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    reference_cached: int
    other_cached: int
    prompt_tokens: int
    fraction_equal: float
    mean_abs_blocks: float
    max_abs_blocks: int
    differing: list[tuple[RequestRecord, RequestRecord]]

    @property
    def relative_difference(self) -> float:
        if self.reference_cached == 0:
            return 0.0 if self.other_cached == 0 else float("inf")
        return (self.other_cached - self.reference_cached) / self.reference_cached


def compare(
    reference: list[RequestRecord], other: list[RequestRecord], block_size: int
) -> Agreement:
    """Per request, ``other``'s cached tokens against ``reference``'s (vLLM's)."""
    if [(r.program, r.turn) for r in reference] != [(r.program, r.turn) for r in other]:
        raise ValueError("the two replays did not run the same requests in the same order")
    pairs = list(zip(reference, other, strict=True))
    diffs = [abs(a.cached_tokens - b.cached_tokens) // block_size for a, b in pairs]
    differing = [(a, b) for a, b in pairs if a.cached_tokens != b.cached_tokens]
    return Agreement(
        reference_cached=sum(r.cached_tokens for r in reference),
        other_cached=sum(r.cached_tokens for r in other),
        prompt_tokens=sum(r.prompt_tokens for r in reference),
        fraction_equal=1 - len(differing) / len(pairs) if pairs else 1.0,
        mean_abs_blocks=sum(diffs) / len(diffs) if diffs else 0.0,
        max_abs_blocks=max(diffs, default=0),
        differing=differing,
    )
