"""Per-program step records: what happened to each LLM call of a program, and when.

A step is one reasoning call; the time before it since the previous call ended is the
program's acting period. Its tool time is measured exactly when the tool ran through the
sidecar's environments (exec); otherwise, when the program announced its tools (tool
intent), it is the time from the intent to the next call. Steps are kept in a bounded deque
so that a program with thousands of steps cannot grow the sidecar without limit; totals
cover all.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Literal

StepOutcome = Literal["ok", "failed", "aborted", "abandoned"]
MAX_STEPS_KEPT = 512


@dataclass(slots=True)
class StepRecord:
    """One LLM call of a program (wall-clock epoch seconds, durations in seconds)."""

    index: int
    arrival: float
    queue_wait_s: float
    backend: str | None
    outcome: StepOutcome
    stream: bool
    prefill_s: float | None = None  # time to first token (whole call when not streaming)
    decode_s: float | None = None
    total_s: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    acting_s: float | None = None  # gap since the previous step ended
    tool_s: float = 0.0  # tool time before this step: exec time, else intent to arrival
    retried: bool = False
    tools: tuple[str, ...] = ()  # the tools announced (tool intent) before this step

    def as_dict(self) -> dict[str, Any]:
        # every field is a scalar or a tuple of strings (immutable), so no deep copy is
        # needed: 1.5 us against 18 us for dataclasses.asdict, on every proxied call
        # (benchmarks/results/sidecar_overhead.md)
        return {name: getattr(self, name) for name in STEP_FIELDS}


STEP_FIELDS = tuple(field.name for field in fields(StepRecord))


@dataclass(slots=True)
class ProgramTimeline:
    """The steps of one program plus running totals."""

    steps: deque[StepRecord] = field(default_factory=lambda: deque(maxlen=MAX_STEPS_KEPT))
    step_count: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    queue_wait_s: float = 0.0
    tool_s: float = 0.0
    pending_tool_s: float = 0.0
    last_step_end: float | None = None
    tool_intents: int = 0
    pending_tools: tuple[str, ...] = ()
    intent_at: float | None = None  # wall time of the first intent since the last step

    def record_tool_time(self, duration_s: float) -> None:
        self.pending_tool_s += max(0.0, duration_s)

    def record_intent(self, tools: list[str], now: float) -> None:
        """The program announced ``tools``; they and the time until the next call belong to
        the next step."""
        self.tool_intents += 1
        self.pending_tools = self.pending_tools + tuple(
            name for name in tools if name not in self.pending_tools)
        if self.intent_at is None:
            self.intent_at = now

    def add(self, step: StepRecord) -> None:
        step.tool_s = self.pending_tool_s
        if not step.tool_s and self.intent_at is not None:
            step.tool_s = max(0.0, step.arrival - self.intent_at)
        step.tools = self.pending_tools
        if self.last_step_end is not None:
            step.acting_s = max(0.0, step.arrival - self.last_step_end)
        self.pending_tool_s = 0.0
        self.pending_tools = ()
        self.intent_at = None
        self.steps.append(step)
        self.step_count += 1
        self.prompt_tokens += step.prompt_tokens or 0
        self.cached_tokens += step.cached_tokens or 0
        self.completion_tokens += step.completion_tokens or 0
        self.queue_wait_s += step.queue_wait_s
        self.tool_s += step.tool_s
        self.last_step_end = step.arrival + step.queue_wait_s + (step.total_s or 0.0)

    def next_index(self) -> int:
        return self.step_count

    def summary(self) -> dict[str, Any]:
        hit_rate = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None
        return {
            "steps": self.step_count,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "prefix_hit_rate": hit_rate,
            "queue_wait_s": round(self.queue_wait_s, 6),
            # all measured tool time, including the execs since the last step (they join
            # the next step's tool_s): a program busy in tools shows it at once
            "tool_s": round(self.tool_s + self.pending_tool_s, 6),
            "tool_intents": self.tool_intents,
            "pending_tools": list(self.pending_tools),
        }

    def as_list(self) -> list[dict[str, Any]]:
        return [step.as_dict() for step in self.steps]
