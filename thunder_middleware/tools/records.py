"""The manager's record of one environment: its state, resources and the task preparing it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from thunder_middleware.tools.errors import ToolEnvironmentError
from thunder_middleware.tools.handles import EnvHandle, EnvState
from thunder_middleware.tools.providers.base import Instance
from thunder_middleware.tools.specs import EnvSpec


@dataclass(eq=False)
class EnvironmentRecord:
    env_id: str
    owner: str
    spec: EnvSpec
    provider: str
    state: EnvState = EnvState.DECLARED
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    preparation_s: float | None = None
    instance: Instance | None = None
    host_ports: dict[int, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # ready, failed or reclaimed
    cancellable: bool = True  # False while the provider creates (cancelling would leak)
    holds_slot: bool = False  # counts against the cap on live environments
    active_execs: int = 0
    failure: ToolEnvironmentError | None = None
    reclaim_reason: str | None = None

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def handle(self, program_id: str, exec_path: str | None = None) -> EnvHandle:
        host = self.instance.host if self.instance else "127.0.0.1"
        return EnvHandle(
            env_id=self.env_id,
            program_id=program_id,
            provider=self.provider,
            state=self.state,
            image=self.spec.image,
            ref=self.instance.ref if self.instance else None,
            ports=dict(self.host_ports),
            endpoints={port: f"{host}:{hp}" for port, hp in self.host_ports.items()},
            exec_path=exec_path,
            created_at=self.created_at,
            ready_at=self.ready_at,
            preparation_s=self.preparation_s,
            error=self.failure.message if self.failure else None,
            reclaim_reason=self.reclaim_reason,
        )
