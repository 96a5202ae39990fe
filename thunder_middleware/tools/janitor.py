"""Lifecycle collection: which environments to reclaim now, and the loop that does it.

The decision (``doomed_environments``) is a pure function of the records and the clock, so it is
tested without waiting; ``run_janitor`` applies it periodically and samples disk use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from thunder_middleware.tools.handles import EnvState
from thunder_middleware.tools.records import EnvironmentRecord

if TYPE_CHECKING:
    from thunder_middleware.tools.manager import EnvironmentManager

log = logging.getLogger(__name__)


def doomed_environments(
    records: Iterable[EnvironmentRecord],
    now: float,
    idle_timeout_s: float | None,
    program_status: Callable[[str], str | None] | None,
) -> list[tuple[str, str]]:
    """(program key, reason) for environments of ended programs and those idle too long.

    Queued environments are not idle (they wait for a slot), nor are those running a command.
    """
    doomed: list[tuple[str, str]] = []
    for record in records:
        if program_status is not None and program_status(record.owner) in {None, "terminated"}:
            doomed.append((record.owner, "terminated"))
            continue
        timeout = record.spec.idle_timeout_s or idle_timeout_s
        if (timeout and record.active_execs == 0 and record.state is not EnvState.QUEUED
                and now - record.last_used > timeout):
            doomed.append((record.owner, "idle"))
    return doomed


async def run_janitor(manager: EnvironmentManager) -> None:
    """Reclaim doomed environments every ``gc_interval_s``, sample disk every
    ``disk_interval_s``."""
    last_disk_sample = 0.0
    while True:
        await asyncio.sleep(manager.config.gc_interval_s)
        try:
            await manager.collect_garbage()
            if time.monotonic() - last_disk_sample >= manager.config.disk_interval_s:
                last_disk_sample = time.monotonic()
                await manager.sample_disk()
        except Exception:  # the janitor must outlive one bad round
            log.exception("tool-environment janitor round failed")
