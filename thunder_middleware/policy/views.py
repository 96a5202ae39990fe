"""Read-only snapshots of the scheduler's state for the runtime, metrics and the control API.

Snapshots, not live objects: the runtime cannot mutate program state by accident, and a
view taken before a decision list is applied stays a faithful record of that moment.
"""

from __future__ import annotations

from dataclasses import dataclass

from thunder_middleware.policy.types import Phase, Status


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
