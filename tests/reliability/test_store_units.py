"""The SQLite program store: WAL mode, round trips, survival of a killed writer, pruning."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

from thunder_middleware.sidecar.persistence import StoredProgram
from thunder_middleware.store import SQLiteProgramStore


def _record(key: str, status: str = "active", **extra: object) -> StoredProgram:
    tenant, _, program_id = key.partition("/")
    fields: dict[str, object] = dict(
        key=key, tenant=tenant, program_id=program_id, status=status, phase="acting",
        backend="http://127.0.0.1:1", created_at=1.0, updated_at=time.time(),
        timeline_summary={"steps": 3, "prompt_tokens": 120},
        environments=[{"container_id": "c1", "state": "ready"}],
        environment_spec={"image": "python:3.12-slim"})
    fields.update(extra)
    return StoredProgram(**fields)  # type: ignore[arg-type]


def test_round_trip_and_wal(tmp_path: Path) -> None:
    store = SQLiteProgramStore(tmp_path)
    assert store.journal_mode == "wal"
    store.save(_record("a/one"))
    store.save(_record("a/one", status="paused"))  # upsert, not a second row
    store.save(_record("b/two", status="terminated", terminated_reason="released"))
    store.close()
    again = SQLiteProgramStore(tmp_path)
    records = {record.key: record for record in again.load()}
    assert set(records) == {"a/one", "b/two"}
    assert records["a/one"].status == "paused"
    assert records["a/one"].timeline_summary == {"steps": 3, "prompt_tokens": 120}
    assert records["a/one"].environments == [{"container_id": "c1", "state": "ready"}]
    assert [r.key for r in again.load_live()] == ["a/one"]
    again.delete("a/one")
    assert again.count() == 1


def _writer(path: str, ready: multiprocessing.synchronize.Event) -> None:
    store = SQLiteProgramStore(path)
    for index in range(200):
        store.save(_record(f"t/p{index}"))
    ready.set()
    while True:  # keep writing until killed
        store.save(_record("t/p0", status="paused"))


def test_a_killed_writer_loses_no_committed_record(tmp_path: Path) -> None:
    ready = multiprocessing.get_context("fork").Event()
    process = multiprocessing.get_context("fork").Process(
        target=_writer, args=(str(tmp_path), ready))
    process.start()
    assert ready.wait(30)
    os.kill(process.pid or 0, signal.SIGKILL)
    process.join(10)
    store = SQLiteProgramStore(tmp_path)
    assert store.count() == 200
    assert store.load_live()[0].program_id.startswith("p")


def test_prune_keeps_live_and_newest_ended(tmp_path: Path) -> None:
    store = SQLiteProgramStore(tmp_path / "s.db", ended_kept=5)
    for index in range(20):
        store.save(_record(f"t/ended{index}", status="terminated", updated_at=float(index)))
    store.save(_record("t/live"))
    store.prune()
    assert store.count("terminated") == 5 and store.count() == 6
    kept = {record.key for record in store.load() if record.status == "terminated"}
    assert kept == {f"t/ended{index}" for index in range(15, 20)}


def test_the_memory_store_does_not_keep_ended_programs() -> None:
    from thunder_middleware.sidecar.persistence import InMemoryProgramStore

    store = InMemoryProgramStore()
    for index in range(100):
        store.save(_record(f"t/p{index}"))
        store.save(_record(f"t/p{index}", status="terminated"))
    store.save(_record("t/live"))
    assert [record.key for record in store.load()] == ["t/live"]
