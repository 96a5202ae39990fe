"""Bring a restarted sidecar's registry back from its store.

What comes back: every live program (id, tenant, creation time, last activity, the
timeline's totals and its recent steps, the environment it declared) and the most recent
ended ones, so that
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
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from thunder_middleware.sidecar.identity import NAMESPACE_SEPARATOR, is_anonymous_key
from thunder_middleware.sidecar.persistence import StoredProgram
from thunder_middleware.sidecar.registry import ProgramRegistry
from thunder_middleware.sidecar.timeline import ProgramTimeline, StepRecord

_STEP_FIELDS = frozenset(field.name for field in fields(StepRecord))

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RestoreReport:
    live: int
    ended: int
    environments_declared: int
    skipped: int = 0  # stored records that could not be read back (logged)


def _step(stored: Any) -> tuple[StepRecord, float]:
    """A stored step and the time it ended; ValueError/TypeError for a corrupt one. Fields
    unknown to this version are dropped; a missing required one is an error."""
    if not isinstance(stored, dict):
        raise TypeError(f"a step must be an object, not {type(stored).__name__}")
    step = StepRecord(**{name: value for name, value in stored.items() if name in _STEP_FIELDS})
    if not isinstance(step.index, int):
        raise TypeError(f"step index {step.index!r} is not an integer")
    step.tools = tuple(str(name) for name in step.tools or ())  # JSON gives a list
    end = float(step.arrival) + float(step.queue_wait_s) + float(step.total_s or 0.0)
    return step, end


def _timeline(summary: dict[str, Any], steps: list[dict[str, Any]], key: str = "?"
              ) -> ProgramTimeline:
    timeline = ProgramTimeline()
    for stored in steps:  # one bad step is logged and skipped, never the whole program
        try:
            step, end = _step(stored)
        except (TypeError, ValueError) as exc:
            log.error("skipping a corrupt stored step of %s: %s", key, exc)
            continue
        timeline.steps.append(step)
        timeline.last_step_end = end
    timeline.step_count = int(summary.get("steps") or 0)
    timeline.prompt_tokens = int(summary.get("prompt_tokens") or 0)
    timeline.cached_tokens = int(summary.get("cached_tokens") or 0)
    timeline.completion_tokens = int(summary.get("completion_tokens") or 0)
    timeline.queue_wait_s = float(summary.get("queue_wait_s") or 0.0)
    timeline.tool_s = float(summary.get("tool_s") or 0.0)
    timeline.tool_intents = int(summary.get("tool_intents") or 0)
    return timeline


def restore_registry(
    registry: ProgramRegistry,
    records: list[StoredProgram],
    steps_of: Callable[[str], list[dict[str, Any]]] = lambda key: [],
) -> RestoreReport:
    """Put stored programs back into ``registry`` (records oldest first); ``steps_of`` gives
    a program's stored steps (the store's ``load_steps``)."""
    live = ended = skipped = 0
    for record in records:
        try:  # everything that can fail, before the registry is touched
            key = record.key
            if not isinstance(key, str) or NAMESPACE_SEPARATOR not in key \
                    or is_anonymous_key(key):  # anonymous programs are never stored
                raise ValueError(f"bad key {key!r}")
            created_at, updated_at = float(record.created_at), float(record.updated_at)
            if not isinstance(record.timeline_summary, dict):
                raise TypeError("timeline_summary is not an object")
            if record.environment_spec is not None and \
                    not isinstance(record.environment_spec, dict):
                raise TypeError("environment_spec is not an object")
            try:
                steps = steps_of(key)
            except Exception:  # the record is still worth restoring without its steps
                log.exception("could not load the stored steps of %s", key)
                steps = []
            timeline = _timeline(record.timeline_summary, steps, key)
        except Exception as exc:  # one bad record must not stop the sidecar from starting
            log.error("skipping a corrupt stored program %r: %s",
                      getattr(record, "key", None), exc)
            skipped += 1
            continue
        program = registry.ensure(key, False, created_at)
        program.last_activity = updated_at
        program.timeline = timeline
        program.environment_spec = record.environment_spec
        program.last_backend = record.backend if isinstance(record.backend, str) else None
        if record.status == "terminated":
            registry.end(key, str(record.terminated_reason or "terminated"))
            ended += 1
        else:
            live += 1
    return RestoreReport(live=live, ended=ended, environments_declared=0, skipped=skipped)


async def redeclare_environments(manager: Any, registry: ProgramRegistry,
                                 presets: dict[str, Any] | None = None) -> int:
    """Declare again (lazily) the environments of restored live programs; ``presets`` are
    the sidecar's (bundled plus --env-presets), so a stored preset name resolves as before."""
    from thunder_middleware.tools import default_presets, resolve_spec

    known = default_presets() if presets is None else presets
    declared = 0
    for key, program in list(registry.live.items()):
        if program.environment_spec is None:
            continue
        try:
            spec = resolve_spec(dict(program.environment_spec), known)
            await manager.declare(key, spec, prepare=False)
            declared += 1
        except Exception:  # one bad stored spec must not stop the sidecar from starting
            log.exception("could not declare the environment of restored program %s", key)
    return declared
