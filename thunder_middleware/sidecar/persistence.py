"""Where program records go on every state change, so a restarted sidecar can find them.

The runtime only knows the :class:`ProgramStore` protocol. The default keeps records in
memory (a restart forgets them); issue 7's SQLite store implements the same three methods
and is passed to ``create_app(store=...)`` without touching the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class StoredProgram:
    """The durable part of a program: identity, placement, a timeline summary, ownership."""

    key: str  # "{tenant}/{program_id}"
    tenant: str
    program_id: str
    status: str  # policy Status value, or "registered" before the first request
    phase: str | None
    backend: str | None
    created_at: float
    updated_at: float
    terminated_reason: str | None = None
    timeline_summary: dict[str, Any] = field(default_factory=dict)
    environments: list[dict[str, Any]] = field(default_factory=list)
    environment_spec: dict[str, Any] | None = None


class ProgramStore(Protocol):
    """Persistence of program records; called synchronously from the event loop.

    Steps are saved apart from the record, one append per LLM call, so that a save stays
    small however long the program runs and a restarted sidecar still shows each step.
    """

    def save(self, record: StoredProgram) -> None: ...

    def save_step(self, key: str, step: dict[str, Any]) -> None: ...

    def delete(self, key: str) -> None: ...

    def load(self) -> list[StoredProgram]: ...

    def load_steps(self, key: str) -> list[dict[str, Any]]: ...


class InMemoryProgramStore:
    """The default store: a dict. Fast, and forgets everything on restart."""

    def __init__(self) -> None:
        self._records: dict[str, StoredProgram] = {}

    def save(self, record: StoredProgram) -> None:
        if record.status == "terminated":
            # nothing reads it back before a restart (the registry keeps the recent ended
            # programs), so keeping it would grow memory with every program ever seen
            self._records.pop(record.key, None)
            return
        self._records[record.key] = record

    def save_step(self, key: str, step: dict[str, Any]) -> None:
        """Nothing to do: the live timeline holds the steps, and a restart forgets all."""

    def delete(self, key: str) -> None:
        self._records.pop(key, None)

    def load(self) -> list[StoredProgram]:
        return list(self._records.values())

    def load_steps(self, key: str) -> list[dict[str, Any]]:
        return []
