"""Plain data shared by the policy, the live sidecar and the virtual-time simulator.

The policy is pure: these records go in, :data:`Decision` records come out. Nothing here
knows about asyncio, HTTP or wall-clock time, which is what lets the same
``ProgramScheduler`` object run behind the FastAPI sidecar and inside the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    """What a program is doing between the sidecar's points of view."""

    REASONING = "reasoning"  # a request is in flight or waiting at the gate
    ACTING = "acting"  # between requests: a tool is running on the client side


class Status(StrEnum):
    """Where a program's KV footprint is accounted."""

    ACTIVE = "active"  # bound to a backend; its demand counts there
    PAUSED = "paused"  # in the global waiting queue, bound nowhere
    TERMINATED = "terminated"  # released or expired; kept only for inspection


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by the engine for one completed call."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class CallTiming:
    """Seconds measured by the runtime around one upstream call (not engine-internal).

    ``first_token_s`` is the time from sending to the first byte of output (for a
    non-streaming call, equal to ``total_s``); the policy learns prefill and decode rates
    from these, so it never needs to see a clock other than the injected ``now``.
    """

    queue_wait_s: float
    first_token_s: float
    total_s: float


# --- decisions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admit:
    """The program's waiting request may go to ``backend`` now (it was already bound)."""

    program_id: str
    backend: str


@dataclass(frozen=True, slots=True)
class Restore:
    """Bind a paused (or new) program to ``backend``; release its waiting request if any."""

    program_id: str
    backend: str


@dataclass(frozen=True, slots=True)
class Pause:
    """Unbind an acting program; its next request waits at the gate until restored."""

    program_id: str
    backend: str


@dataclass(frozen=True, slots=True)
class MarkForPause:
    """A reasoning program is never cut mid-request: pause it when its call completes."""

    program_id: str
    backend: str


@dataclass(frozen=True, slots=True)
class Expire:
    """The program was idle past the idle timeout: terminate it and reclaim what it owns."""

    program_id: str


Decision = Admit | Restore | Pause | MarkForPause | Expire
