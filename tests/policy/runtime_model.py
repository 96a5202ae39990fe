"""A minimal runtime that applies the scheduler's decisions and checks they make sense.

It plays the part of the sidecar's gates (or the simulator): it knows only what the
decisions told it, so any decision that does not fit what it has been told before
(an Admit of a program not bound there, a Restore to an unhealthy backend, a Pause of a
program that is not active) fails here, independently of the scheduler's own bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thunder_middleware.policy import (
    Admit,
    Decision,
    Expire,
    MarkForPause,
    Pause,
    ProgramScheduler,
    Restore,
)


@dataclass
class GateState:
    bound_to: str | None = None
    gate: int = 0  # requests held at the gate
    upstream: int = 0  # requests sent to the backend
    marked: bool = False


@dataclass
class RuntimeModel:
    scheduler: ProgramScheduler
    healthy: dict[str, bool] = field(default_factory=dict)
    programs: dict[str, GateState] = field(default_factory=dict)
    log: list[Decision] = field(default_factory=list)
    # programs paused in the last apply() because an earlier MarkForPause came due
    completed_marks: set[str] = field(default_factory=set)

    # --- events, forwarded to the scheduler ------------------------------------------
    def add_backend(self, name: str, capacity: int, now: float) -> list[Decision]:
        self.healthy[name] = True
        return self.apply(self.scheduler.add_backend(name, capacity, now))

    def set_health(self, name: str, healthy: bool, now: float) -> list[Decision]:
        decisions = self.scheduler.update_backend(name, now, healthy=healthy)
        self.healthy[name] = healthy
        return self.apply(decisions)

    def request(self, pid: str, now: float, tokens: int) -> list[Decision]:
        gate = self.programs.setdefault(pid, GateState())
        gate.gate += 1
        return self.apply(self.scheduler.on_request(pid, now, tokens * 4, tokens))

    def done(
        self, pid: str, now: float, usage: object = None, timing: object = None
    ) -> list[Decision]:
        gate = self.programs[pid]
        assert gate.upstream > 0, f"{pid} finished a call it never sent"
        gate.upstream -= 1
        return self.apply(self.scheduler.on_request_done(pid, now, usage, timing))  # type: ignore[arg-type]

    def abandon(self, pid: str, now: float) -> list[Decision]:
        gate = self.programs[pid]
        assert gate.gate > 0
        gate.gate -= 1
        return self.apply(self.scheduler.on_request_abandoned(pid, now))

    def release(self, pid: str, now: float) -> list[Decision]:
        self.programs.pop(pid, None)
        return self.apply(self.scheduler.on_release(pid, now))

    def tick(self, now: float) -> list[Decision]:
        return self.apply(self.scheduler.tick(now))

    # --- decisions ---------------------------------------------------------------------
    def apply(self, decisions: list[Decision]) -> list[Decision]:
        self.completed_marks = set()
        for d in decisions:
            self.log.append(d)
            if isinstance(d, Expire):
                gate = self.programs.pop(d.program_id)
                assert gate.gate == 0 and gate.upstream == 0, f"expired a busy program {d}"
                continue
            gate = self.programs[d.program_id]
            if isinstance(d, Admit):
                assert gate.bound_to == d.backend, f"{d} but bound to {gate.bound_to}"
                assert not gate.marked, f"{d} of a program marked for pause"
                assert gate.gate > 0, f"{d} without a waiting request"
                gate.upstream += gate.gate
                gate.gate = 0
            elif isinstance(d, Restore):
                assert gate.bound_to is None, f"{d} of a program already bound"
                assert self.healthy[d.backend], f"{d} to an unhealthy backend"
                gate.bound_to = d.backend
                gate.upstream += gate.gate
                gate.gate = 0
            elif isinstance(d, Pause):
                assert gate.bound_to == d.backend, f"{d} but bound to {gate.bound_to}"
                assert gate.upstream == 0, f"{d} cuts a request in flight"
                if gate.marked:
                    self.completed_marks.add(d.program_id)
                gate.bound_to = None
                gate.marked = False
            elif isinstance(d, MarkForPause):
                assert gate.bound_to == d.backend, f"{d} but bound to {gate.bound_to}"
                assert gate.upstream > 0, f"{d} of a program with nothing in flight"
                assert not gate.marked
                gate.marked = True
        return decisions
