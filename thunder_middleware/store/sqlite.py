"""A SQLite program store in WAL mode: the sidecar's registry survives a crash.

Why SQLite in WAL mode: it ships with Python, a commit is a small append to the log (the
runtime saves on the event loop, on every state change, so it must be cheap), readers never
block the writer, and ``synchronous=NORMAL`` in WAL mode cannot corrupt the database on a
crash; at worst the last few commits before a power loss are lost (a ``kill -9`` of the
process loses nothing, since committed pages are in the OS's cache).

One row per program key; the record is stored as JSON next to the columns that queries
need (tenant, status), so new record fields need no migration. Steps live in their own table,
one row per LLM call, the newest ``MAX_STEPS_KEPT`` per program (as in memory), so saving a
step is one small insert whatever the program's length.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from thunder_middleware.sidecar.persistence import StoredProgram
from thunder_middleware.sidecar.timeline import MAX_STEPS_KEPT

log = logging.getLogger(__name__)

# 1: programs; 2: + steps. Opening an older file creates what is missing (every statement of
# _SCHEMA is IF NOT EXISTS) and bumps its version; a newer file is refused (StoreError).
SCHEMA_VERSION = 2
DB_NAME = "programs.sqlite3"
ENDED_KEPT = 1000  # terminated records kept for GET /programs/{id} after a restart
PRUNE_EVERY = 256  # saves between prunes of old terminated records

_SCHEMA = """
CREATE TABLE IF NOT EXISTS programs (
    key TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    updated_at REAL NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS programs_status ON programs (status, updated_at);
CREATE TABLE IF NOT EXISTS steps (
    key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (key, idx)
) WITHOUT ROWID;
"""
TRIM_EVERY = 64  # steps of one program between trims of its oldest steps


class StoreError(RuntimeError):
    """The state directory's database cannot be used; the message says why and what to do."""


def _to_record(row: bytes) -> StoredProgram:
    data: dict[str, Any] = orjson.loads(row)
    return StoredProgram(**data)


def _records(rows: list[tuple[Any, ...]]) -> list[StoredProgram]:
    """The records of ``rows``; a corrupt one (bad JSON, a field missing) is logged and
    skipped: one bad row must not keep the sidecar from starting."""
    records: list[StoredProgram] = []
    for (row,) in rows:
        try:
            records.append(_to_record(row))
        except (ValueError, TypeError) as exc:
            log.error("skipping a corrupt stored program record: %s", exc)
    return records


class SQLiteProgramStore:
    """Implements the sidecar's ProgramStore protocol (save, delete, load) on one file."""

    def __init__(self, path: Path | str, *, ended_kept: int = ENDED_KEPT) -> None:
        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path.mkdir(parents=True, exist_ok=True)
            path = path / DB_NAME
        self.path = path
        self.ended_kept = ended_kept
        self._saves = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"cannot open the program store {path}: {exc}; move the file "
                             "away (or use another --state-dir) to start with an empty "
                             "store") from exc
        except StoreError:
            self._db.close()
            raise

    def _open(self) -> None:
        """Check the file's schema version, then bring an older file up to this one."""
        self._db.execute("PRAGMA busy_timeout=5000")
        stored = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if stored > SCHEMA_VERSION:
            raise StoreError(
                f"the program store {self.path} has schema version {stored}, written by a "
                f"newer thunder-middleware; this version reads up to version "
                f"{SCHEMA_VERSION}. Upgrade thunder-middleware, or start with another "
                "--state-dir (or move the file away) to begin with an empty store.")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        if stored != SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if stored:
                log.warning("program store %s upgraded from schema version %d to %d",
                            self.path, stored, SCHEMA_VERSION)

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @property
    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def save(self, record: StoredProgram) -> None:
        blob = orjson.dumps(asdict(record), default=str)
        with self._lock:
            self._db.execute(
                "INSERT INTO programs (key, tenant, status, updated_at, record) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET tenant=excluded.tenant,"
                " status=excluded.status, updated_at=excluded.updated_at, "
                "record=excluded.record",
                (record.key, record.tenant, record.status, record.updated_at, blob))
            self._saves += 1
            if self._saves % PRUNE_EVERY == 0:
                self._prune()

    def save_step(self, key: str, step: dict[str, Any]) -> None:
        index = int(step["index"])
        blob = orjson.dumps(step, default=str)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO steps (key, idx, record) VALUES (?, ?, ?)",
                             (key, index, blob))
            if index % TRIM_EVERY == 0 and index >= MAX_STEPS_KEPT:
                self._db.execute("DELETE FROM steps WHERE key = ? AND idx <= ?",
                                 (key, index - MAX_STEPS_KEPT))

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM programs WHERE key = ?", (key,))
            self._db.execute("DELETE FROM steps WHERE key = ?", (key,))

    def load(self) -> list[StoredProgram]:
        """Every stored record, live ones and the most recent terminated ones."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM programs ORDER BY updated_at").fetchall()
        return _records(rows)

    def load_steps(self, key: str) -> list[dict[str, Any]]:
        """The newest ``MAX_STEPS_KEPT`` steps of ``key``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM (SELECT idx, record FROM steps WHERE key = ? "
                "ORDER BY idx DESC LIMIT ?) ORDER BY idx", (key, MAX_STEPS_KEPT)).fetchall()
        steps: list[dict[str, Any]] = []
        for (row,) in rows:
            try:
                step = orjson.loads(row)
            except ValueError as exc:
                log.error("skipping a corrupt stored step of %s: %s", key, exc)
                continue
            if isinstance(step, dict):
                steps.append(step)
            else:
                log.error("skipping a stored step of %s that is not an object", key)
        return steps

    def load_live(self) -> list[StoredProgram]:
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM programs WHERE status != 'terminated' ORDER BY updated_at"
            ).fetchall()
        return _records(rows)

    def count(self, status: str | None = None) -> int:
        with self._lock:
            if status is None:
                row = self._db.execute("SELECT COUNT(*) FROM programs").fetchone()
            else:
                row = self._db.execute("SELECT COUNT(*) FROM programs WHERE status = ?",
                                       (status,)).fetchone()
        return int(row[0])

    def _prune(self) -> None:
        """Keep only the newest ``ended_kept`` terminated records (live ones are never
        pruned), and the steps of none but the records kept."""
        old = self._db.execute(
            "SELECT key FROM programs WHERE status = 'terminated' ORDER BY updated_at DESC "
            "LIMIT -1 OFFSET ?", (self.ended_kept,)).fetchall()
        self._db.executemany("DELETE FROM programs WHERE key = ?", old)
        self._db.executemany("DELETE FROM steps WHERE key = ?", old)

    def prune(self) -> None:
        with self._lock:
            self._prune()

    def close(self) -> None:
        with self._lock:
            self._db.close()

