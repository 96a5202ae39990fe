"""The sidecar's own record of each program: what the policy does not need to know.

The policy keeps what it schedules on (c, phase, status, backend). The sidecar keeps
identity (tenant, caller id), the timeline, counters of what happened, and a bounded
history of ended programs so that ``GET /programs/{id}`` still answers after a release.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from thunder_middleware.sidecar.identity import public_id, split_key
from thunder_middleware.sidecar.timeline import ProgramTimeline

ENDED_KEPT = 1000


@dataclass(slots=True)
class TrackedProgram:
    """One program as the sidecar sees it (wall-clock epoch seconds)."""

    key: str
    tenant: str
    program_id: str
    anonymous: bool
    created_at: float
    last_activity: float
    timeline: ProgramTimeline = field(default_factory=ProgramTimeline)
    last_backend: str | None = None
    paused: bool = False
    pauses: int = 0
    restores: int = 0
    migrations: int = 0
    terminated_reason: str | None = None
    environment_spec: dict[str, Any] | None = None


class ProgramRegistry:
    """Live programs by key, plus the most recent ended ones."""

    def __init__(self, ended_kept: int = ENDED_KEPT) -> None:
        self.live: dict[str, TrackedProgram] = {}
        self.ended: OrderedDict[str, TrackedProgram] = OrderedDict()
        self._ended_kept = ended_kept

    def get(self, key: str) -> TrackedProgram | None:
        return self.live.get(key) or self.ended.get(key)

    def ensure(self, key: str, anonymous: bool, now: float) -> TrackedProgram:
        """The live record of ``key``. A released or expired id used again is live again
        and keeps its timeline: an id is one conversation, and a later turn must never
        replace an earlier turn's history."""
        program = self.live.get(key)
        if program is None:
            earlier = self.ended.pop(key, None)
            tenant, program_id = split_key(key)
            program = TrackedProgram(key, tenant, public_id(program_id), anonymous, now, now)
            if earlier is not None:
                program.created_at = earlier.created_at
                program.timeline = earlier.timeline
            self.live[key] = program
        return program

    def end(self, key: str, reason: str) -> TrackedProgram | None:
        program = self.live.pop(key, None)
        if program is None:
            return None
        program.terminated_reason = reason
        if not program.anonymous:
            self.ended[key] = program
            while len(self.ended) > self._ended_kept:
                self.ended.popitem(last=False)
        return program

    def of_tenant(self, tenant: str) -> list[TrackedProgram]:
        live = [p for p in self.live.values() if p.tenant == tenant]
        return live + [p for p in self.ended.values() if p.tenant == tenant]
