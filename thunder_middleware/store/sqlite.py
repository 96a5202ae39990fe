"""A SQLite program store in WAL mode: the sidecar's registry survives a crash.

Why SQLite in WAL mode: it ships with Python, a commit is a small append to the log (the
runtime saves on the event loop, on every state change, so it must be cheap), readers never
block the writer, and ``synchronous=NORMAL`` in WAL mode cannot corrupt the database on a
crash; at worst the last few commits before a power loss are lost (a ``kill -9`` of the
process loses nothing, since committed pages are in the OS's cache).

One row per program key; the record is stored as JSON next to the columns that queries
need (tenant, status), so new record fields need no migration.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from thunder_middleware.sidecar.persistence import StoredProgram

SCHEMA_VERSION = 1
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
"""


def _to_record(row: bytes) -> StoredProgram:
    data: dict[str, Any] = orjson.loads(row)
    return StoredProgram(**data)


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
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

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

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM programs WHERE key = ?", (key,))

    def load(self) -> list[StoredProgram]:
        """Every stored record, live ones and the most recent terminated ones."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM programs ORDER BY updated_at").fetchall()
        return [_to_record(row[0]) for row in rows]

    def load_live(self) -> list[StoredProgram]:
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM programs WHERE status != 'terminated' ORDER BY updated_at"
            ).fetchall()
        return [_to_record(row[0]) for row in rows]

    def count(self, status: str | None = None) -> int:
        with self._lock:
            if status is None:
                row = self._db.execute("SELECT COUNT(*) FROM programs").fetchone()
            else:
                row = self._db.execute("SELECT COUNT(*) FROM programs WHERE status = ?",
                                       (status,)).fetchone()
        return int(row[0])

    def _prune(self) -> None:
        """Keep only the newest ``ended_kept`` terminated records (live ones are never pruned)."""
        self._db.execute(
            "DELETE FROM programs WHERE status = 'terminated' AND key NOT IN (SELECT key FROM "
            "programs WHERE status = 'terminated' ORDER BY updated_at DESC LIMIT ?)",
            (self.ended_kept,))

    def prune(self) -> None:
        with self._lock:
            self._prune()

    def close(self) -> None:
        with self._lock:
            self._db.close()

