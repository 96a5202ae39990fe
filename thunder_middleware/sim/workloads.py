"""Seeded generators of agent programs shaped like the fleets in DESIGN.md section 7.

A program is everything a closed-loop agent will do, fixed in advance: its task text, and per
step how many tokens the model will write, which tool then runs for how long, and what that
tool returns. Fixing it in advance (rather than sampling while simulating) is what makes two
policies comparable on exactly the same work, and what lets a run be saved as a trace and
replayed by the live harness.

Each program is derived from ``(workload seed, program index)`` alone, so program 17 is the
same whichever policy asks for it first. Token ids are drawn from a fixed range well inside any
real vocabulary; only their identity matters (prefix caching hashes them).

Distributions (lognormal, clipped to the DESIGN ranges) were chosen so that the heavy tails
the brief mentions exist: most SWE-agent observations are a few hundred tokens, a few are
thousands; most router searches take seconds, a few take a minute.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field

import numpy as np

TOKEN_ID_LOW = 1_000
TOKEN_ID_HIGH = 30_000


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One reasoning + acting period: the model writes ``output_tokens``, then ``tool`` runs."""

    output_tokens: int
    tool: str
    tool_duration_s: float
    observation: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """One agent workflow, start to finish."""

    program_id: str
    workload: str
    task: tuple[int, ...]
    steps: tuple[StepSpec, ...]
    setup_s: float  # environment preparation (container start, repo checkout)
    disk_gb: float

    def context_tokens(self, system_prompt_len: int) -> int:
        """Prompt length of the last step plus its output: the program's peak footprint."""
        body = sum(s.output_tokens + len(s.observation) for s in self.steps[:-1])
        return system_prompt_len + len(self.task) + body + self.steps[-1].output_tokens


@dataclass(frozen=True, slots=True)
class Clipped:
    """A lognormal with the given median and spread, clipped to ``[low, high]``."""

    low: float
    high: float
    median: float
    sigma: float

    def sample(self, rng: random.Random) -> float:
        value = self.median * math.exp(rng.gauss(0.0, self.sigma))
        return min(self.high, max(self.low, value))

    def sample_int(self, rng: random.Random) -> int:
        return round(self.sample(rng))


@dataclass(frozen=True, slots=True)
class ToolShape:
    """A tool an agent of this workload calls: how often, how long, how much it returns."""

    name: str
    weight: float
    duration_s: Clipped
    observation_tokens: Clipped


@dataclass(frozen=True, slots=True)
class WorkloadShape:
    """The distributions of one fleet kind (the DESIGN section 7 parameters)."""

    name: str
    system_prompt_tokens: tuple[int, int]
    task_tokens: Clipped
    steps: tuple[int, int]
    output_tokens: Clipped
    tools: tuple[ToolShape, ...]
    setup_s: tuple[float, float]
    disk_gb: tuple[float, float]
    context_limit: int  # agents stop (or condense) before their context grows past this


SWE_AGENT = WorkloadShape(
    name="swe-agent",
    system_prompt_tokens=(3_000, 6_000),
    task_tokens=Clipped(200, 2_000, 600, 0.6),
    steps=(20, 60),
    output_tokens=Clipped(150, 600, 300, 0.45),
    tools=(
        ToolShape("bash", 0.45, Clipped(0.5, 10, 1.5, 0.8), Clipped(100, 3_000, 450, 0.9)),
        ToolShape("edit", 0.30, Clipped(0.5, 10, 1.0, 0.5), Clipped(100, 3_000, 250, 0.6)),
        ToolShape("run_tests", 0.25, Clipped(0.5, 10, 5.0, 0.5), Clipped(100, 3_000, 900, 0.8)),
    ),
    setup_s=(5.0, 20.0),
    disk_gb=(2.0, 5.0),
    context_limit=60_000,
)

OPENHANDS = WorkloadShape(
    name="openhands",
    system_prompt_tokens=(9_500, 10_500),
    task_tokens=Clipped(200, 2_000, 500, 0.6),
    steps=(30, 100),
    output_tokens=Clipped(150, 600, 280, 0.45),
    tools=(
        ToolShape("execute_bash", 0.5, Clipped(1, 30, 4.0, 0.9), Clipped(100, 3_000, 300, 0.9)),
        ToolShape(
            "str_replace_editor", 0.3, Clipped(1, 30, 1.5, 0.5), Clipped(80, 2_000, 250, 0.6)
        ),
        ToolShape("browser", 0.2, Clipped(1, 30, 8.0, 0.7), Clipped(200, 3_000, 800, 0.7)),
    ),
    setup_s=(30.0, 50.0),
    disk_gb=(9.0, 11.0),
    context_limit=96_000,
)

ROUTER = WorkloadShape(
    name="router",
    system_prompt_tokens=(2_000, 3_000),
    task_tokens=Clipped(100, 1_500, 300, 0.6),
    steps=(5, 15),
    output_tokens=Clipped(80, 500, 200, 0.5),
    tools=(
        ToolShape("search", 0.6, Clipped(1, 60, 4.0, 1.0), Clipped(300, 3_000, 1_000, 0.6)),
        ToolShape("model", 0.25, Clipped(5, 250, 25.0, 1.0), Clipped(100, 2_000, 500, 0.7)),
        ToolShape("python", 0.15, Clipped(0.5, 10, 1.5, 0.7), Clipped(50, 1_000, 150, 0.8)),
    ),
    setup_s=(0.5, 2.0),
    disk_gb=(0.1, 0.3),
    context_limit=32_000,
)

# Coding agents whose tools are quick (a grep, a file read, a short test): the regime where a
# pause costs more than the re-prefill it saves, so a gate that holds programs back loses.
SHORT_TOOL = WorkloadShape(
    name="short-tool",
    system_prompt_tokens=(2_000, 4_000),
    task_tokens=Clipped(100, 1_500, 400, 0.6),
    steps=(10, 40),
    output_tokens=Clipped(60, 400, 150, 0.5),
    tools=(
        ToolShape("read", 0.5, Clipped(0.2, 3, 0.4, 0.6), Clipped(100, 2_000, 400, 0.8)),
        ToolShape("grep", 0.3, Clipped(0.2, 3, 0.3, 0.5), Clipped(50, 1_000, 150, 0.7)),
        ToolShape("test", 0.2, Clipped(0.2, 3, 1.5, 0.5), Clipped(100, 2_000, 500, 0.8)),
    ),
    setup_s=(1.0, 3.0),
    disk_gb=(0.5, 1.0),
    context_limit=16_000,
)

SHAPES: dict[str, WorkloadShape] = {
    s.name: s for s in (SWE_AGENT, OPENHANDS, ROUTER, SHORT_TOOL)
}


def _token_ids(rng: random.Random, count: int) -> tuple[int, ...]:
    """``count`` ids seeded from ``rng`` (numpy draws them: tens of millions per sweep)."""
    generator = np.random.Generator(np.random.PCG64(rng.getrandbits(64)))
    return tuple(generator.integers(TOKEN_ID_LOW, TOKEN_ID_HIGH, size=count).tolist())


def reply_token_ids(program_id: str, step: int, count: int) -> list[int]:
    """The ids an agent appends for the model's reply of ``step`` (seeded by program and step).

    Both harnesses append these (not the engine's own output) so that a live run, where the
    server returns text, builds exactly the prompts a simulated run builds.
    """
    seed = zlib.crc32(f"{program_id}/{step}".encode())
    generator = np.random.Generator(np.random.PCG64(seed))
    ids: list[int] = generator.integers(TOKEN_ID_LOW, TOKEN_ID_HIGH, size=count).tolist()
    return ids


@dataclass
class Workload:
    """An endless, seeded, indexable stream of programs of one shape.

    ``program(i)`` depends only on ``(shape, seed, i)``; the shared system prompt only on
    ``(shape, seed)``.
    """

    shape: WorkloadShape
    seed: int = 0
    _system_prompt: tuple[int, ...] = field(default=(), init=False, repr=False)

    @property
    def name(self) -> str:
        return self.shape.name

    @property
    def system_prompt(self) -> tuple[int, ...]:
        if not self._system_prompt:
            rng = random.Random(f"{self.shape.name}/{self.seed}/system")
            low, high = self.shape.system_prompt_tokens
            self._system_prompt = _token_ids(rng, rng.randint(low, high))
        return self._system_prompt

    def program(self, index: int) -> ProgramSpec:
        shape = self.shape
        rng = random.Random(f"{shape.name}/{self.seed}/program/{index}")
        task = _token_ids(rng, shape.task_tokens.sample_int(rng))
        context = len(self.system_prompt) + len(task)
        weights = [t.weight for t in shape.tools]
        steps: list[StepSpec] = []
        for _ in range(rng.randint(*shape.steps)):
            tool = rng.choices(shape.tools, weights)[0]
            output = shape.output_tokens.sample_int(rng)
            observation = tool.observation_tokens.sample_int(rng)
            if steps and context + output + observation > shape.context_limit:
                break
            duration = round(tool.duration_s.sample(rng), 3)
            steps.append(StepSpec(output, tool.name, duration, _token_ids(rng, observation)))
            context += output + observation
        return ProgramSpec(
            program_id=f"{shape.name}-{self.seed}-{index:05d}",
            workload=shape.name,
            task=task,
            steps=tuple(steps),
            setup_s=round(rng.uniform(*shape.setup_s), 3),
            disk_gb=round(rng.uniform(*shape.disk_gb), 2),
        )

    def programs(self, count: int, start: int = 0) -> list[ProgramSpec]:
        return [self.program(i) for i in range(start, start + count)]


def workload(name: str, seed: int = 0) -> Workload:
    """The workload called ``name`` (``swe-agent``, ``openhands``, ``router``)."""
    try:
        return Workload(SHAPES[name], seed)
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; known: {sorted(SHAPES)}") from None
