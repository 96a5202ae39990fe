"""The SQLite program store: WAL mode, round trips, survival of a killed writer, pruning."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import orjson
import pytest

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


def _step(index: int) -> dict[str, object]:
    return {"index": index, "arrival": 100.0 + index, "queue_wait_s": 0.01, "backend": "b",
            "outcome": "ok", "stream": False, "total_s": 0.5, "prompt_tokens": 10 * index}


def test_steps_round_trip_trimmed_to_the_newest(tmp_path: Path) -> None:
    from thunder_middleware.sidecar.timeline import MAX_STEPS_KEPT
    from thunder_middleware.store.sqlite import TRIM_EVERY

    store = SQLiteProgramStore(tmp_path)
    store.save(_record("a/long"))
    store.save(_record("a/short"))
    total = MAX_STEPS_KEPT + 2 * TRIM_EVERY + 5
    for index in range(total):
        store.save_step("a/long", _step(index))
    store.save_step("a/short", _step(0))
    store.save_step("a/short", _step(0) | {"outcome": "failed"})  # a rewrite, not a second row
    store.close()
    again = SQLiteProgramStore(tmp_path)
    long_steps = again.load_steps("a/long")
    assert [step["index"] for step in long_steps] == list(range(total - MAX_STEPS_KEPT, total))
    assert long_steps[-1]["prompt_tokens"] == 10 * (total - 1)
    stored = again._db.execute("SELECT COUNT(*) FROM steps WHERE key = 'a/long'").fetchone()[0]
    assert stored <= MAX_STEPS_KEPT + TRIM_EVERY  # old rows are trimmed, not kept forever
    assert again.load_steps("a/short") == [_step(0) | {"outcome": "failed"}]
    assert again.load_steps("a/never") == []
    again.delete("a/short")
    assert again.load_steps("a/short") == []


def test_pruned_programs_take_their_steps_with_them(tmp_path: Path) -> None:
    store = SQLiteProgramStore(tmp_path / "s.db", ended_kept=1)
    for index in range(3):
        key = f"t/ended{index}"
        store.save(_record(key, status="terminated", updated_at=float(index)))
        store.save_step(key, _step(0))
    store.prune()
    assert [store.load_steps(f"t/ended{index}") != [] for index in range(3)] == [
        False, False, True]


def test_restored_timeline_carries_its_steps(tmp_path: Path) -> None:
    from thunder_middleware.sidecar.registry import ProgramRegistry
    from thunder_middleware.store.restore import restore_registry

    store = SQLiteProgramStore(tmp_path)
    store.save(_record("a/one"))
    for index in range(3):
        store.save_step("a/one", _step(index) | {"from_a_newer_version": True})
    registry = ProgramRegistry()
    report = restore_registry(registry, store.load(), store.load_steps)
    assert report.live == 1
    timeline = registry.live["a/one"].timeline
    assert [step["index"] for step in timeline.as_list()] == [0, 1, 2]
    assert timeline.step_count == 3 and timeline.next_index() == 3
    assert timeline.last_step_end == 102.0 + 0.01 + 0.5


def test_the_memory_store_does_not_keep_ended_programs() -> None:
    from thunder_middleware.sidecar.persistence import InMemoryProgramStore

    store = InMemoryProgramStore()
    for index in range(100):
        store.save(_record(f"t/p{index}"))
        store.save(_record(f"t/p{index}", status="terminated"))
    store.save(_record("t/live"))
    assert [record.key for record in store.load()] == ["t/live"]


def test_corrupt_records_and_steps_are_skipped_not_fatal(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """One bad stored row (bad JSON, a field missing, a wrong type) is logged and skipped:
    the sidecar still starts, with every good program and step."""
    from thunder_middleware.sidecar.app import create_app
    from thunder_middleware.sidecar.registry import ProgramRegistry
    from thunder_middleware.sidecar.settings import SidecarSettings
    from thunder_middleware.store.restore import restore_registry

    store = SQLiteProgramStore(tmp_path)
    store.save(_record("a/good"))
    store.save(_record("a/bad-summary", timeline_summary={"steps": "many"}))
    for index in range(2):
        store.save_step("a/good", _step(index))
    bad_steps = [b"{not json", orjson.dumps({"index": 3, "queue_wait_s": 0.1, "backend": None,
                                             "outcome": "ok", "stream": False}),  # no arrival
                 orjson.dumps([1, 2]), orjson.dumps(_step(5) | {"arrival": "soon"}),
                 orjson.dumps(_step(6) | {"index": "six"})]
    for index, blob in enumerate(bad_steps, start=2):
        store._db.execute("INSERT INTO steps (key, idx, record) VALUES ('a/good', ?, ?)",
                          (index, blob))
    good = orjson.loads(store._db.execute("SELECT record FROM programs WHERE key = 'a/good'")
                        .fetchone()[0])
    for key, blob in (("a/broken", b"{broken"), ("a/list", b"[1, 2]"),
                      ("a/missing", orjson.dumps({k: v for k, v in good.items()
                                                  if k != "tenant"} | {"key": "a/missing"}))):
        store._db.execute("INSERT INTO programs (key, tenant, status, updated_at, record) "
                          "VALUES (?, 'a', 'active', 1.0, ?)", (key, blob))
    records = store.load()
    assert [record.key for record in records] == ["a/good", "a/bad-summary"]
    assert len(store.load_steps("a/good")) == 5  # bad JSON and a non-object never come back
    registry = ProgramRegistry()
    report = restore_registry(registry, records, store.load_steps)
    assert (report.live, report.skipped) == (1, 1)
    assert [step["index"] for step in registry.live["a/good"].timeline.as_list()] == [0, 1]
    store.close()
    assert "skipping a corrupt stored" in caplog.text

    app = create_app(SidecarSettings(backends=["http://127.0.0.1:9"], state_dir=tmp_path,
                                     env_provider="none"))
    assert set(app.state.runtime.registry.live) == {"a/good"}
    app.state.runtime.store.close()


def test_an_older_store_is_upgraded_in_place(tmp_path: Path) -> None:
    """A version-1 file (programs only) gets the steps table and version 2, records kept."""
    import sqlite3

    from thunder_middleware.store.sqlite import SCHEMA_VERSION

    path = tmp_path / "programs.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE programs (key TEXT PRIMARY KEY, tenant TEXT NOT NULL, "
                      "status TEXT NOT NULL, updated_at REAL NOT NULL, record BLOB NOT NULL);"
                      "PRAGMA user_version=1;")
    record = _record("a/old")
    old.execute("INSERT INTO programs VALUES ('a/old', 'a', 'active', 1.0, ?)",
                (orjson.dumps(asdict(record)),))
    old.commit()
    old.close()
    store = SQLiteProgramStore(tmp_path)
    assert store.schema_version == SCHEMA_VERSION == 2
    assert [r.key for r in store.load()] == ["a/old"]
    store.save_step("a/old", _step(0))
    assert store.load_steps("a/old") == [_step(0)]
    store.close()


def test_a_newer_or_foreign_store_is_refused_clearly(tmp_path: Path) -> None:
    import sqlite3
    import subprocess
    import sys

    from thunder_middleware.store import StoreError

    SQLiteProgramStore(tmp_path).close()
    newer = sqlite3.connect(tmp_path / "programs.sqlite3")
    newer.execute("PRAGMA user_version=3")
    newer.close()
    with pytest.raises(StoreError, match=r"schema version 3.*newer.*reads up to version 2"):
        SQLiteProgramStore(tmp_path)
    served = subprocess.run(
        [sys.executable, "-m", "thunder_middleware", "serve", "--backend", "http://127.0.0.1:9",
         "--state-dir", str(tmp_path), "--env-provider", "none"],
        capture_output=True, text=True, timeout=60, check=False)
    assert served.returncode == 2, served.stderr
    assert "schema version 3" in served.stderr and "Traceback" not in served.stderr
    assert sqlite3.connect(tmp_path / "programs.sqlite3").execute(
        "PRAGMA user_version").fetchone()[0] == 3  # refused, not rewritten

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "programs.sqlite3").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot open the program store"):
        SQLiteProgramStore(foreign)
