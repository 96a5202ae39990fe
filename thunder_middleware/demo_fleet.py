"""The demo's agent fleet: real LangGraph agents whose tools take time and return long output.

The demo must show, on a 2-core machine in under three minutes, what happens to a fleet of
agents when their KV caches outgrow one replica. So the agents are real ``create_agent``
graphs driven by the engine twin's tool calls, but their tools are stand-ins for slow,
verbose tools (test runs, searches, file reads): they sleep for a sampled, time-scaled
duration and return a deterministic log of a sampled length. That keeps the acting phases
and the context growth of a coding agent without needing a repository per agent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import BaseTool, StructuredTool
from langchain_openai import ChatOpenAI

from thunder_middleware.integrations.langchain import ThunderMiddleware

_WORDS = [
    "module",
    "function",
    "assert",
    "fixture",
    "config",
    "parser",
    "schema",
    "token",
    "buffer",
    "cache",
    "request",
    "handler",
    "retry",
    "timeout",
    "socket",
    "thread",
    "worker",
    "queue",
    "stream",
    "record",
    "index",
    "commit",
    "branch",
    "patch",
    "diff",
    "build",
    "compile",
    "import",
    "export",
    "vector",
    "matrix",
    "tensor",
    "kernel",
    "layer",
    "block",
]


def system_prompt(words: int = 2400) -> str:
    """A long shared system prompt (about 3k tokens), like a coding agent's instructions."""
    rng = random.Random("thunder-demo-system-prompt")
    lines = ["You are a software engineering agent. Follow the repository guide below."]
    for section in range(words // 60):
        body = " ".join(rng.choice(_WORDS) for _ in range(60))
        lines.append(f"## Guide section {section}\n{body}")
    return "\n".join(lines)


def tool_log(rng: random.Random, lines: int) -> str:
    """A deterministic, compiler-log-like observation."""
    return "\n".join(
        f"{rng.choice(_WORDS)}.py:{rng.randint(1, 999)}: {' '.join(rng.choices(_WORDS, k=8))}"
        for _ in range(lines)
    )


@dataclass(frozen=True)
class FleetShape:
    """What every agent of the fleet does; both runs of the demo use the same shape."""

    agents: int = 24
    tasks_per_agent: int = 1
    tool_turns: tuple[int, int] = (10, 14)  # the twin's tool-call turns per task
    tool_seconds: tuple[float, float] = (0.5, 2.0)  # modeled seconds, divided by time_scale
    observation_lines: tuple[int, int] = (80, 120)  # about 25 tokens a line: contexts of 20-40k
    max_tokens: int = 400
    time_scale: float = 5.0
    seed: int = 0


def slow_tools(shape: FleetShape, rng: random.Random) -> list[BaseTool]:
    """Tools that take time (acting phase) and grow the context (long observations)."""

    async def act(kind: str, argument: str) -> str:
        await asyncio.sleep(rng.uniform(*shape.tool_seconds) / shape.time_scale)
        header = f"$ {kind} {argument}\n"
        return header + tool_log(rng, rng.randint(*shape.observation_lines))

    async def run_tests(path: str) -> str:
        return await act("pytest", path)

    async def search_code(query: str) -> str:
        return await act("grep -rn", query)

    async def read_file(path: str) -> str:
        return await act("cat", path)

    return [
        StructuredTool.from_function(
            coroutine=run_tests,
            name="run_tests",
            description="Run the test suite at a path; returns the test log.",
        ),
        StructuredTool.from_function(
            coroutine=search_code,
            name="search_code",
            description="Search the repository for a string; returns matching lines.",
        ),
        StructuredTool.from_function(
            coroutine=read_file,
            name="read_file",
            description="Read a source file; returns its content.",
        ),
    ]


@dataclass
class FleetResult:
    """What one fleet run did, measured on the client side."""

    wall_s: float
    steps: int
    tasks: int
    failures: int
    step_latencies_s: list[float] = field(default_factory=list)


async def run_fleet(
    shape: FleetShape,
    *,
    base_url: str,
    model: str,
    through_sidecar: bool,
    on_task_done: Callable[[], None] | None = None,
) -> FleetResult:
    """Run every agent's tasks, the agents concurrently; each task is one program."""
    prompt = system_prompt()
    result = FleetResult(wall_s=0.0, steps=0, tasks=0, failures=0)

    async def one_agent(index: int) -> None:
        rng = random.Random(f"{shape.seed}:agent:{index}")
        for task in range(shape.tasks_per_agent):
            program_id = f"demo-{index}-{task}"
            llm = ChatOpenAI(
                model=model,
                base_url=base_url + "/v1",
                api_key="EMPTY",  # type: ignore[arg-type,call-arg]
                max_tokens=shape.max_tokens,
                max_retries=0,
                timeout=600,
            )
            middleware = (
                [ThunderMiddleware(base_url, program_id=program_id, send_tool_intent=False)]
                if through_sidecar
                else []
            )
            agent = create_agent(
                llm, slow_tools(shape, rng), system_prompt=prompt, middleware=middleware
            )
            question = f"Task {program_id}: fix the failing test in module_{rng.randint(1, 99)}."
            started = time.monotonic()
            try:
                state = await agent.ainvoke(
                    {"messages": [{"role": "user", "content": question}]}, {"recursion_limit": 60}
                )
            except Exception:
                result.failures += 1
            else:
                steps = sum(1 for m in state["messages"] if isinstance(m, AIMessage))
                result.steps += steps
                result.tasks += 1
                result.step_latencies_s.append((time.monotonic() - started) / max(steps, 1))
            if on_task_done is not None:
                on_task_done()

    started = time.monotonic()
    await asyncio.gather(*(one_agent(i) for i in range(shape.agents)))
    result.wall_s = time.monotonic() - started
    return result
