"""Specs, presets, the port pool, disk accounting, labels and the collection policy."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thunder_middleware.tools import (
    EnvState,
    InvalidSpec,
    PortPool,
    PortsExhausted,
    UnknownPreset,
    default_presets,
    load_presets,
    parse_spec,
    resolve_spec,
)
from thunder_middleware.tools.disk import DiskLedger, directory_usage
from thunder_middleware.tools.janitor import doomed_environments
from thunder_middleware.tools.labels import current_instance_id, instance_is_dead
from thunder_middleware.tools.records import EnvironmentRecord
from thunder_middleware.tools.specs import parse_size


def test_sizes_and_limits() -> None:
    assert parse_size("512m") == 512 * 1024**2
    assert parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert parse_size(4096) == 4096
    assert parse_spec({"memory": "64m", "cpus": 0.5}).memory == 64 * 1024**2
    for bad, param in [({"memory": "lots"}, "memory"), ({"memory": "1m"}, "memory"),
                       ({"cpus": 0}, "cpus"), ({"ports": [0]}, "ports"),
                       ({"ports": [80, 80]}, "ports"), ({"env": {"THUNDER_OWNER": "x"}}, "env"),
                       ({"workdir": "relative"}, "workdir"),
                       ({"volumes": [{"mount": "/a/../etc"}]}, "volumes.0.mount"),
                       ({"readiness": {"command": ["true"], "tcp_port": 80}}, "readiness")]:
        with pytest.raises(InvalidSpec) as error:
            parse_spec(bad)
        assert error.value.param == param, bad
        assert error.value.status_code == 400


def test_presets_load_and_override(tmp_path: Path) -> None:
    presets = default_presets()
    assert {"busybox", "busybox-httpd", "shell-sandbox", "local-shell"} <= set(presets)
    spec = resolve_spec({"preset": "busybox", "memory": "256m"}, presets)
    assert spec.image == presets["busybox"].image and spec.memory == 256 * 1024**2
    with pytest.raises(UnknownPreset):
        resolve_spec({"preset": "nope"}, presets)
    custom = tmp_path / "presets.toml"
    custom.write_text('[presets.py]\nimage = "python:3.12"\ncpus = 2\n')
    assert load_presets(custom)["py"].cpus == 2
    custom.write_text('[presets.bad]\ncpus = -1\n')
    with pytest.raises(InvalidSpec, match="preset 'bad'"):
        load_presets(custom)


def test_port_pool_skips_taken_ports_and_never_lends_twice() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        if taken > 65000:
            pytest.skip("ephemeral port too close to the end of the range")
        pool = PortPool(taken, taken + 3)
        lent = pool.acquire("a", 2)
        assert taken not in lent and len(set(lent)) == 2
    with pytest.raises(PortsExhausted):
        pool.acquire("b", 3)
    assert pool.in_use == 2  # all or none
    assert pool.release(lent) == 2 and pool.release(lent) == 0


def test_port_pool_under_concurrency() -> None:
    pool = PortPool(26000, 26199)
    results: list[list[int]] = []
    lock = threading.Lock()

    def grab(owner: str) -> None:
        ports = pool.acquire(owner, 5)
        with lock:
            results.append(ports)

    threads = [threading.Thread(target=grab, args=(f"o{i}",)) for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [port for ports in results for port in ports]
    assert len(flat) == 150 and len(set(flat)) == 150


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
def test_directory_usage_counts_file_bytes(tmp_path_factory: pytest.TempPathFactory,
                                           sizes: list[int]) -> None:
    root = tmp_path_factory.mktemp("du")
    (root / "sub").mkdir()
    for index, size in enumerate(sizes):
        folder = root / "sub" if index % 2 else root
        (folder / f"f{index}").write_bytes(b"x" * size)
    if sizes:
        os.link(root / "f0", root / "hardlink")  # counted once
        (root / "symlink").symlink_to(root / "f0")  # not followed
    assert directory_usage(root) == sum(sizes)


def test_disk_ledger_per_program_and_total() -> None:
    ledger = DiskLedger()
    ledger.record("e1", "t/a", 100)
    ledger.record("e2", "t/a", 50)
    ledger.record("e3", "t/b", 7)
    assert (ledger.of_program("t/a"), ledger.total()) == (150, 157)
    assert ledger.forget("e1") == 100 and ledger.total() == 57


def test_instance_liveness() -> None:
    assert not instance_is_dead(current_instance_id())
    host = socket.gethostname()
    assert instance_is_dead(f"{host}:{2**22 + 12345}:1")  # no such pid
    assert instance_is_dead(f"{host}:{os.getpid()}:1")  # pid reused by someone else
    assert not instance_is_dead("another-host:1:1")  # cannot tell: never reaped
    assert not instance_is_dead("garbage")


def test_collection_policy() -> None:
    now = time.monotonic()
    spec = parse_spec({})

    def record(owner: str, idle_for: float, state: EnvState = EnvState.READY,
               busy: int = 0) -> EnvironmentRecord:
        made = EnvironmentRecord(env_id=owner, owner=owner, spec=spec, provider="local",
                                 state=state, last_used=now - idle_for)
        made.active_execs = busy
        return made

    records = [record("t/fresh", 1), record("t/idle", 100), record("t/busy", 100, busy=1),
               record("t/queued", 100, EnvState.QUEUED), record("t/gone", 1)]
    status = {"t/gone": "terminated"}
    doomed = doomed_environments(records, now, 30, lambda key: status.get(key, "live"))
    assert sorted(doomed) == [("t/gone", "terminated"), ("t/idle", "idle")]
    assert doomed_environments(records, now, None, None) == []
