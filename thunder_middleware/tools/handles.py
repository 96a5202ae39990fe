"""What the manager hands out: environment handles, exec results and reclaim reports."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class EnvState(StrEnum):
    DECLARED = "declared"  # spec known, nothing created yet
    QUEUED = "queued"  # waiting for a slot under the cap on live environments
    PREPARING = "preparing"  # being created, or created and not yet passing its readiness check
    READY = "ready"
    FAILED = "failed"  # preparation failed; its resources are already released
    RECLAIMED = "reclaimed"


LIVE_STATES = frozenset({EnvState.PREPARING, EnvState.READY})


class EnvHandle(BaseModel):
    """How an agent reaches its environment (``ports`` maps environment port -> host port)."""

    env_id: str
    program_id: str
    provider: str
    state: EnvState
    image: str | None = None
    ref: str | None = Field(None, description="container id, pod name or working directory")
    ports: dict[int, int] = Field(default_factory=dict)
    endpoints: dict[int, str] = Field(default_factory=dict)
    exec_path: str | None = None
    created_at: float
    ready_at: float | None = None
    preparation_s: float | None = None
    disk_bytes: int = 0
    error: str | None = None
    reclaim_reason: str | None = None


class ExecResult(BaseModel):
    """A command's outcome. ``exit_code`` 127 = command not found, 124 = timed out (killed)."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float
    truncated: bool = False
    timed_out: bool = False
    waited_for_ready_s: float = 0.0


class ReclaimedCounts(BaseModel):
    """What one provider teardown removed; the manager adds ports and sums per program."""

    containers: int = 0
    processes: int = 0
    volumes: int = 0
    directories: int = 0
    pods: int = 0

    def add(self, other: ReclaimedCounts) -> ReclaimedCounts:
        return ReclaimedCounts(
            **{name: getattr(self, name) + getattr(other, name) for name in type(self).model_fields}
        )


class ReclaimReport(ReclaimedCounts):
    program_id: str
    environments: int = 0
    ports: int = 0
    disk_bytes_freed: int = 0
    reason: str = "release"
