"""The scheduler's mutable record of one program (DESIGN section 2).

Only the scheduler mutates these; everyone else sees :class:`ProgramView` snapshots, so the
runtime can never change program state behind the policy's back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from thunder_middleware.policy.types import Phase, Status


class RestoreClass(IntEnum):
    """Restore priority in the global queue (DESIGN section 3): lower is restored first.

    A paused program with a waiting request has a client blocked on it; a new program has one
    too but has waited less in total; a paused acting program blocks nobody yet.
    """

    STARVING = -1
    REASONING = 0
    NEW = 1
    ACTING = 2


@dataclass(slots=True)
class ProgramRecord:
    """State of one program; ``c`` is the KV footprint it needs when it reasons next."""

    program_id: str
    c: float
    created_at: float
    status: Status = Status.PAUSED
    backend: str | None = None
    # requests at the gate (not yet sent) and requests sent upstream
    waiting: int = 0
    inflight: int = 0
    marked: bool = False
    starving: bool = False  # waited past the bound: first in the restore order
    ever_bound: bool = False
    acting_since: float = 0.0
    waiting_since: float | None = None  # first gate arrival still waiting (starvation clock)
    queued_since: float | None = None
    dispatched_at: float = 0.0
    last_prompt_chars: int = 0
    reusable: float = 0.0  # tokens of its last call (prompt + reply) its next call can reuse
    arrived_at: float = 0.0  # when its outstanding call reached the gate
    check_epoch: int = -1  # the self-check epoch that call is charged to (-1: none)
    steps: int = 0
    pauses: int = 0
    restores: int = 0

    @property
    def phase(self) -> Phase:
        return Phase.REASONING if self.waiting or self.inflight else Phase.ACTING

    @property
    def restore_class(self) -> RestoreClass:
        if self.waiting > 0 and self.starving:
            return RestoreClass.STARVING
        if self.waiting > 0:
            return RestoreClass.REASONING if self.ever_bound else RestoreClass.NEW
        return RestoreClass.ACTING
