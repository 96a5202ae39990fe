"""What programs do between LLM calls: tool intents and a learned tool time per tool name.

A tool intent ("the program is about to run these tools") is a scheduling signal first: it
says the program is acting and names the tools, whose past durations predict how long the
program will be away from the engine. The estimate here is per tool name, over a bounded set
of names (``max_names``; later names share the label :data:`OTHER`), so an agent that invents
tool names cannot grow the sidecar's memory or its metric labels without limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OTHER = "other"
#: weight of the newest observation in the moving estimate (about the last ten runs)
EWMA_ALPHA = 0.2


@dataclass(slots=True)
class ToolEstimate:
    """Running statistics of one tool name's duration, in wall-clock seconds."""

    count: int = 0
    total_s: float = 0.0
    ewma_s: float = 0.0
    max_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total_s += seconds
        self.ewma_s = seconds if self.count == 1 else (
            EWMA_ALPHA * seconds + (1.0 - EWMA_ALPHA) * self.ewma_s)
        self.max_s = max(self.max_s, seconds)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean_s": round(self.total_s / self.count, 6)
                if self.count else None, "recent_s": round(self.ewma_s, 6),
                "max_s": round(self.max_s, 6)}


class ToolTimes:
    """Tool time per tool name (bounded label set), learned from the steps of all programs."""

    def __init__(self, max_names: int = 64) -> None:
        self.max_names = max(1, max_names)
        self._estimates: dict[str, ToolEstimate] = {}

    def label(self, name: str) -> str:
        """``name`` while the set has room or already holds it, else :data:`OTHER`."""
        if name in self._estimates or len(self._estimates) < self.max_names:
            return name
        return OTHER

    def observe(self, name: str, seconds: float) -> str:
        """Record one run of ``name``; returns the label it was counted under."""
        label = self.label(name)
        self._estimates.setdefault(label, ToolEstimate()).observe(max(0.0, seconds))
        return label

    def estimate_s(self, name: str) -> float | None:
        """The recent (moving-average) duration of ``name``, None before its first run."""
        found = self._estimates.get(self.label(name))
        return found.ewma_s if found is not None and found.count else None

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: estimate.as_dict() for name, estimate in sorted(self._estimates.items())}
