"""Knobs of the environment manager (the sidecar maps its CLI flags onto these)."""

from __future__ import annotations

from dataclasses import dataclass

from thunder_middleware.tools.errors import InvalidSpec


@dataclass
class ManagerConfig:
    max_live: int = 64  # live environments at once; more requests queue
    prepare_concurrency: int = 8  # creations in flight towards the engine
    create_attempts: int = 3
    idle_timeout_s: float | None = 900.0
    ready_wait_timeout_s: float = 600.0  # longest an exec waits for preparation
    default_exec_timeout_s: float = 60.0
    max_exec_timeout_s: float = 3600.0
    output_limit: int = 64 * 1024
    gc_interval_s: float = 1.0
    disk_interval_s: float = 5.0
    port_range: tuple[int, int] = (20000, 29999)
    reclaim_on_close: bool = True
    history: int = 10_000  # reclaimed records kept for describe() and 409s

    def exec_timeout(self, timeout_s: float | None) -> float:
        """The timeout an exec runs under: the default when none is asked for; a 400 outside
        ``(0, max_exec_timeout_s]``, so one caller cannot hold an environment for ever."""
        if timeout_s is None:
            return self.default_exec_timeout_s
        if not 0 < timeout_s <= self.max_exec_timeout_s:
            raise InvalidSpec(
                f"timeout_s must lie in (0, {self.max_exec_timeout_s:g}]", param="timeout_s"
            )
        return timeout_s
