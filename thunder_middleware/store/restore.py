"""Bring a restarted sidecar's registry back from its store.

What comes back: every live program (id, tenant, creation time, last activity, the
timeline's totals, the environment it declared) and the most recent ended ones, so that
``GET /programs`` and ``GET /programs/{id}`` answer as before the crash. What does not: the
policy's in-memory state (placement, context size), which the next request rebuilds from
its payload and usage, since the engine's KV cache did not survive anyway from the
sidecar's point of view. Environments: the manager reaps every container of the dead
process by label at start-up; a restored program's declared environment is declared again
(without preparing), so its next exec or tool intent recreates it. Idle expiry still
applies: a program idle past the timeout before the crash expires on the first tick.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from thunder_middleware.sidecar.persistence import StoredProgram
from thunder_middleware.sidecar.registry import ProgramRegistry
from thunder_middleware.sidecar.timeline import ProgramTimeline

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RestoreReport:
    live: int
    ended: int
    environments_declared: int


def _timeline(summary: dict[str, Any]) -> ProgramTimeline:
    timeline = ProgramTimeline()
    timeline.step_count = int(summary.get("steps") or 0)
    timeline.prompt_tokens = int(summary.get("prompt_tokens") or 0)
    timeline.cached_tokens = int(summary.get("cached_tokens") or 0)
    timeline.completion_tokens = int(summary.get("completion_tokens") or 0)
    timeline.queue_wait_s = float(summary.get("queue_wait_s") or 0.0)
    timeline.tool_s = float(summary.get("tool_s") or 0.0)
    return timeline


def restore_registry(registry: ProgramRegistry, records: list[StoredProgram]) -> RestoreReport:
    """Put stored programs back into ``registry`` (records oldest first)."""
    live = ended = 0
    for record in records:
        program = registry.ensure(record.key, False, record.created_at)
        program.last_activity = record.updated_at
        program.timeline = _timeline(record.timeline_summary)
        program.environment_spec = record.environment_spec
        program.last_backend = record.backend
        if record.status == "terminated":
            registry.end(record.key, record.terminated_reason or "terminated")
            ended += 1
        else:
            live += 1
    return RestoreReport(live=live, ended=ended, environments_declared=0)


async def redeclare_environments(manager: Any, registry: ProgramRegistry) -> int:
    """Declare again (lazily) the environments of restored live programs."""
    from thunder_middleware.tools import default_presets, resolve_spec

    declared = 0
    for key, program in list(registry.live.items()):
        if program.environment_spec is None:
            continue
        try:
            spec = resolve_spec(dict(program.environment_spec), default_presets())
            await manager.declare(key, spec, prepare=False)
            declared += 1
        except Exception:  # one bad stored spec must not stop the sidecar from starting
            log.exception("could not declare the environment of restored program %s", key)
    return declared
