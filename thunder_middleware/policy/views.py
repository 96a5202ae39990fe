"""Read-only snapshots of the scheduler's state for the runtime, metrics and the control API.

Snapshots, not live objects: the runtime cannot mutate program state by accident, and a
view taken before a decision list is applied stays a faithful record of that moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from thunder_middleware.policy.types import Phase, Status

if TYPE_CHECKING:  # records are built by the scheduler; views only read them
    from thunder_middleware.policy.backend import BackendState
    from thunder_middleware.policy.program import ProgramRecord


@dataclass(frozen=True, slots=True)
class ProgramView:
    program_id: str
    c: float  # tokens of context (the KV footprint of its next reasoning step)
    phase: Phase
    status: Status
    backend: str | None
    marked_for_pause: bool
    waiting_requests: int  # requests held at the gate
    inflight_requests: int  # requests sent upstream
    created_at: float
    acting_since: float | None  # None while reasoning
    queued_since: float | None  # None unless paused
    waiting_since: float | None  # oldest request held at the gate, if any
    steps: int  # completed calls
    pauses: int
    restores: int


@dataclass(frozen=True, slots=True)
class BackendView:
    name: str
    capacity_tokens: int
    healthy: bool
    demand: float  # committed demand after the shared-prefix correction
    reasoning_demand: float  # sum of c over reasoning programs (not marked), uncorrected
    acting_demand: float  # sum of c * f(t) over acting programs, uncorrected
    high_watermark: float  # lambda_eff * C: above it, programs are paused
    low_watermark: float  # restores happen below it
    lambda_eff: float  # lambda_max unless the cost model allows overcommit
    sharing_factor: float  # committed / raw demand after the shared-prefix correction
    kv_usage: float | None  # the engine's last reported gauge (0..1)
    programs: int  # programs bound here
    reasoning_programs: int
    prefill_rate: float | None  # learned, linear-token units per second
    decode_rate: float | None  # learned, output tokens per second per request
    shared_prefix_tokens: float = 0.0  # learned prefix all programs share (held once)
    gating: str = "gate"  # "gate" or "pass" (pass-through), chosen by the self-check
    gating_gain: float | None = None  # measured L(pass) / L(gate); > 1: gating pays


def program_view(rec: ProgramRecord) -> ProgramView:
    idle = rec.waiting == 0 and rec.inflight == 0
    return ProgramView(
        program_id=rec.program_id,
        c=rec.c,
        phase=rec.phase,
        status=rec.status,
        backend=rec.backend,
        marked_for_pause=rec.marked,
        waiting_requests=rec.waiting,
        inflight_requests=rec.inflight,
        created_at=rec.created_at,
        acting_since=rec.acting_since if idle else None,
        queued_since=rec.queued_since,
        waiting_since=rec.waiting_since,
        steps=rec.steps,
        pauses=rec.pauses,
        restores=rec.restores,
    )


def backend_view(b: BackendState, now: float, gating_gain: float | None = None) -> BackendView:
    return BackendView(
        name=b.name,
        capacity_tokens=b.capacity,
        healthy=b.healthy,
        demand=b.committed(now),
        reasoning_demand=max(b.demand.reasoning_sum, 0.0),
        acting_demand=b.demand.acting.value(now),
        high_watermark=b.high_watermark,
        low_watermark=b.low_watermark,
        lambda_eff=b.lambda_eff,
        sharing_factor=(b.committed(now) / raw) if (raw := b.demand.raw(now)) > 0 else 1.0,
        shared_prefix_tokens=b.shared,
        kv_usage=b.kv_usage,
        programs=b.program_count,
        reasoning_programs=b.demand.reasoning_count,
        prefill_rate=b.rates.prefill_rate,
        decode_rate=b.rates.decode_rate,
        gating="pass" if b.passthrough else "gate",
        gating_gain=gating_gain,
    )
