"""A program store that degrades instead of breaking when its disk is full or read-only.

Invariant: a store write never raises into the request path. The registry in memory is the
truth while the sidecar runs; the store is its copy for a restart. When a write fails
(``database or disk is full``, a read-only file system, an I/O error), the guard keeps what
it could not write (the newest record of each program, its unwritten steps, deletions) in
memory, says so once with a WARNING and the ``thunder_sidecar_store_degraded`` gauge, and
writes it all out at the first :meth:`GuardedStore.recover` that succeeds (the runtime
tries on every policy tick). Meanwhile LLM calls flow as before; only the control writes
that promise durability (register, release, declare) answer 503 (:meth:`require_writable`).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from prometheus_client import Counter, Gauge

from thunder_middleware.sidecar.errors import APIError
from thunder_middleware.sidecar.persistence import ProgramStore, StoredProgram
from thunder_middleware.sidecar.timeline import MAX_STEPS_KEPT

log = logging.getLogger(__name__)

#: what a store raises when its file system cannot take a write
STORE_ERRORS = (sqlite3.Error, OSError)


class GuardedStore:
    """Wraps a ProgramStore (the same protocol) so that a failed write degrades."""

    def __init__(self, inner: ProgramStore, degraded_gauge: Gauge | None = None,
                 failures: Counter | None = None) -> None:
        self.inner = inner
        self.degraded_reason: str | None = None
        self._gauge = degraded_gauge
        self._failures = failures
        self._saves: dict[str, StoredProgram] = {}
        self._steps: dict[str, list[dict[str, Any]]] = {}
        self._deletes: set[str] = set()

    @property
    def degraded(self) -> bool:
        return self.degraded_reason is not None

    @property
    def pending(self) -> int:
        """Writes held in memory until the store takes writes again."""
        return len(self._saves) + sum(map(len, self._steps.values())) + len(self._deletes)

    def _failed(self, exc: BaseException) -> None:
        if self._failures is not None:
            self._failures.inc()
        if self.degraded_reason is None:
            log.warning("the program store cannot be written (%s): programs keep running "
                        "from memory; register, release and declare answer 503 until it "
                        "can (free space or make the state directory writable)", exc)
            if self._gauge is not None:
                self._gauge.set(1)
        self.degraded_reason = str(exc)

    # --- ProgramStore ---------------------------------------------------------------------
    def save(self, record: StoredProgram) -> None:
        self._deletes.discard(record.key)
        if not self.degraded:
            try:
                self.inner.save(record)
                return
            except STORE_ERRORS as exc:
                self._failed(exc)
        self._saves[record.key] = record

    def save_step(self, key: str, step: dict[str, Any]) -> None:
        if not self.degraded:
            try:
                self.inner.save_step(key, step)
                return
            except STORE_ERRORS as exc:
                self._failed(exc)
        steps = self._steps.setdefault(key, [])
        steps.append(step)
        del steps[:-MAX_STEPS_KEPT]  # as many as the store itself keeps per program

    def delete(self, key: str) -> None:
        self._saves.pop(key, None)
        self._steps.pop(key, None)
        if not self.degraded:
            try:
                self.inner.delete(key)
                return
            except STORE_ERRORS as exc:
                self._failed(exc)
        self._deletes.add(key)

    def load(self) -> list[StoredProgram]:
        return self.inner.load()

    def load_steps(self, key: str) -> list[dict[str, Any]]:
        return self.inner.load_steps(key)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    # --- degradation ----------------------------------------------------------------------
    def require_writable(self) -> None:
        """Raise a 503 while writes are held in memory: a control write promises that a
        restart will know of it, which the store cannot keep now."""
        if self.degraded:
            raise APIError(
                503, "the sidecar's state directory cannot be written (disk full or read-only: "
                f"{self.degraded_reason}); LLM calls keep working, but programs cannot be "
                "registered, released or given environments until it can. Retry later.",
                code="state_unavailable", retry_after=5.0)

    def recover(self) -> bool:
        """Write out what was held; True once the store takes writes again."""
        if not self.degraded:
            return True
        try:
            for key in list(self._deletes):
                self.inner.delete(key)
                self._deletes.discard(key)
            for key, record in list(self._saves.items()):
                self.inner.save(record)
                del self._saves[key]
            for key, steps in list(self._steps.items()):
                while steps:
                    self.inner.save_step(key, steps[0])
                    steps.pop(0)
                del self._steps[key]
        except STORE_ERRORS as exc:
            self.degraded_reason = str(exc)
            return False
        log.warning("the program store takes writes again; everything held in memory was "
                    "written")
        self.degraded_reason = None
        if self._gauge is not None:
            self._gauge.set(0)
        return True
