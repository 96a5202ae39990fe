"""The manager over the local provider: preparation, exec, limits, ports, reclaim, caps."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from tests.tools.envtest import fast_config, running_manager, wait_state
from thunder_middleware.tools import (
    EnvironmentManager,
    EnvState,
    InvalidSpec,
    LocalProvider,
    NoEnvironment,
    PreparationFailed,
    ProgramReleased,
    TransientProviderError,
    parse_spec,
)
from thunder_middleware.tools.providers.base import Instance, Placement
from thunder_middleware.tools.providers.processes import processes_with

PY = sys.executable
HTTP_SERVER = f"{PY} -m http.server $PORT --bind 127.0.0.1"


async def test_prepared_ahead_then_exec_without_waiting(local_manager: EnvironmentManager) -> None:
    spec = parse_spec({"readiness": {"command": ["sleep", "0.5"], "timeout_s": 10}})
    handle = await local_manager.declare("t/ahead", spec)
    assert handle.state in {EnvState.QUEUED, EnvState.PREPARING}
    await wait_state(local_manager, "t/ahead", EnvState.READY)
    result = await local_manager.exec("t/ahead", "echo hello; echo oops >&2; exit 3", timeout_s=10)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "hello\n", "oops\n")
    assert result.waited_for_ready_s < 0.2
    ready = local_manager.describe("t/ahead")[0]
    assert ready.preparation_s is not None and ready.preparation_s >= 0.5


async def test_exec_waits_for_readiness(local_manager: EnvironmentManager) -> None:
    await local_manager.declare("t/slow", parse_spec(
        {"readiness": {"command": ["sleep", "1"], "timeout_s": 10}}))
    result = await local_manager.exec("t/slow", ["echo", "ran"], timeout_s=10)
    assert result.stdout == "ran\n"
    assert result.waited_for_ready_s >= 0.5


async def test_exec_results_timeouts_and_output_cap(local_manager: EnvironmentManager) -> None:
    await local_manager.declare("t/exec", parse_spec({"workdir": "/src"}))
    missing = await local_manager.exec("t/exec", ["definitely-not-a-command"], timeout_s=5)
    assert missing.exit_code == 127 and "not found" in missing.stderr
    slow = await local_manager.exec("t/exec", "sleep 30", timeout_s=0.5)
    assert slow.timed_out and slow.exit_code == 124 and slow.duration_s < 10
    big = await local_manager.exec("t/exec", f"{PY} -c \"print('x' * 300000)\"", timeout_s=10)
    assert big.truncated and len(big.stdout) == local_manager.config.output_limit
    where = await local_manager.exec("t/exec", "pwd; echo $THUNDER_OWNER", timeout_s=5)
    assert where.stdout.splitlines()[0].endswith("/work/src")
    assert where.stdout.splitlines()[1] == "t/exec"
    with pytest.raises(InvalidSpec):
        await local_manager.exec("t/exec", "true", timeout_s=-1)


async def test_memory_limit_applies(local_manager: EnvironmentManager) -> None:
    await local_manager.declare("t/mem", parse_spec({"memory": "200m"}))
    hog = await local_manager.exec(
        "t/mem", [PY, "-c", "b = bytearray(400 * 1024 * 1024); print('allocated')"], timeout_s=20)
    assert hog.exit_code != 0 and "MemoryError" in hog.stderr
    fine = await local_manager.exec(
        "t/mem", [PY, "-c", "b = bytearray(20 * 1024 * 1024); print('allocated')"], timeout_s=20)
    assert fine.exit_code == 0 and fine.stdout == "allocated\n"


async def test_published_port_reachable_and_reclaimed(local_manager: EnvironmentManager) -> None:
    spec = parse_spec({"command": HTTP_SERVER, "ports": [8080],
                       "readiness": {"http_port": 8080, "timeout_s": 20}})
    await local_manager.declare("t/web", spec)
    await wait_state(local_manager, "t/web", EnvState.READY)
    handle = local_manager.describe("t/web")[0]
    host_port = handle.ports[8080]
    await local_manager.exec("t/web", "echo served > index.html", timeout_s=5)
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"http://127.0.0.1:{host_port}/index.html")
    assert response.text == "served\n"
    assert processes_with("THUNDER_ENV_ID", handle.env_id)
    report = await local_manager.reclaim("t/web")
    assert (report.environments, report.ports, report.directories) == (1, 1, 1)
    assert report.processes >= 1
    assert not processes_with("THUNDER_ENV_ID", handle.env_id)
    assert not Path(str(handle.ref)).exists()
    assert local_manager.ports.in_use == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{host_port}/", timeout=2, trust_env=False)
    with pytest.raises(ProgramReleased):
        await local_manager.exec("t/web", "true", timeout_s=5)


async def test_idle_timeout_reclaims_and_comes_back(local_root: Path) -> None:
    config = fast_config(idle_timeout_s=0.6)
    async with running_manager(LocalProvider(local_root), config) as manager:
        await manager.declare("t/idle", parse_spec({"command": ["sleep", "300"]}))
        await wait_state(manager, "t/idle", EnvState.READY)
        env_id = manager.describe("t/idle")[0].env_id
        await wait_state(manager, "t/idle", EnvState.RECLAIMED)
        assert manager.describe("t/idle")[0].reclaim_reason == "idle"
        assert not processes_with("THUNDER_ENV_ID", env_id)
        assert list(local_root.iterdir()) == []
        again = await manager.exec("t/idle", "echo back", timeout_s=10)  # spec remembered
        assert again.stdout == "back\n"
    assert list(local_root.iterdir()) == []


async def test_cap_queues_instead_of_failing(local_root: Path) -> None:
    async with running_manager(LocalProvider(local_root), fast_config(max_live=2)) as manager:
        for index in range(4):
            await manager.declare(f"t/cap{index}", parse_spec({"command": ["sleep", "300"]}))
        await wait_state(manager, "t/cap1", EnvState.READY)
        await asyncio.sleep(0.3)
        states = [manager.describe(f"t/cap{i}")[0].state for i in range(4)]
        assert states.count(EnvState.READY) == 2 and states.count(EnvState.QUEUED) == 2
        waiting = asyncio.create_task(manager.exec("t/cap3", "echo finally", timeout_s=10))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await manager.reclaim("t/cap0")
        await manager.reclaim("t/cap1")
        result = await asyncio.wait_for(waiting, 20)
        assert result.stdout == "finally\n" and result.waited_for_ready_s > 0.2


class FlakyLocalProvider(LocalProvider):
    """The local provider with a failing engine for the first ``failures`` creations."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures
        self.attempts = 0

    async def create(self, placement: Placement) -> Instance:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TransientProviderError("engine hiccup")
        return await super().create(placement)


async def test_transient_errors_are_retried(local_root: Path) -> None:
    provider = FlakyLocalProvider(local_root, failures=2)
    async with running_manager(provider, fast_config(create_attempts=3)) as manager:
        await manager.declare("t/flaky", parse_spec({}))
        result = await manager.exec("t/flaky", "echo ok", timeout_s=5)
        assert result.stdout == "ok\n" and provider.attempts == 3
        provider.attempts, provider.failures = 0, 5
        await manager.declare("t/broken", parse_spec({}))
        with pytest.raises(TransientProviderError):
            await manager.exec("t/broken", "true", timeout_s=5)
        assert provider.attempts == 3
        assert manager.ports.in_use == 0


async def test_bad_input_leaks_nothing(local_manager: EnvironmentManager, local_root: Path) -> None:
    with pytest.raises(InvalidSpec) as bad_command:
        await local_manager.declare("t/bad", parse_spec({"command": ["no-such-binary-here"]}))
    assert bad_command.value.param == "command"
    with pytest.raises(InvalidSpec) as bad_memory:
        parse_spec({"memory": "1k"})
    assert bad_memory.value.param == "memory"
    with pytest.raises(NoEnvironment):
        await local_manager.exec("t/never", "true", timeout_s=5)
    await local_manager.declare("t/dies", parse_spec(
        {"command": "exit 3", "readiness": {"command": ["sleep", "0.3"], "timeout_s": 5}}))
    with pytest.raises(PreparationFailed):
        await local_manager.exec("t/dies", "true", timeout_s=5)
    await local_manager.declare("t/unready", parse_spec(
        {"readiness": {"command": ["false"], "timeout_s": 0.5, "interval_s": 0.1}}))
    with pytest.raises(PreparationFailed, match="readiness"):
        await local_manager.exec("t/unready", "true", timeout_s=5)
    assert local_manager.describe("t/unready")[0].state is EnvState.FAILED
    assert list(local_root.iterdir()) == []
    assert local_manager.ports.in_use == 0


async def test_metrics_follow_the_lifecycle(local_manager: EnvironmentManager) -> None:
    registry = local_manager.metrics.registry

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return registry.get_sample_value(name, labels or {}) or 0.0

    await local_manager.declare("t/m", parse_spec(
        {"ports": [80], "readiness": {"command": ["sleep", "0.3"], "timeout_s": 10}}))
    await local_manager.exec("t/m", "head -c 300000 /dev/zero > blob", timeout_s=10)
    assert sample("thunder_tool_environments", {"state": "ready"}) == 1
    assert sample("thunder_tool_env_preparation_seconds_count") == 1
    assert sample("thunder_tool_env_preparation_seconds_sum") >= 0.3
    assert sample("thunder_tool_env_readiness_wait_seconds_count") == 1
    assert sample("thunder_tool_env_readiness_wait_seconds_sum") > 0.1
    assert sample("thunder_tool_ports_in_use") == 1
    assert await local_manager.sample_disk() >= 300000
    assert sample("thunder_tool_disk_bytes") >= 300000
    await local_manager.reclaim("t/m")
    assert sample("thunder_tool_environments", {"state": "ready"}) == 0
    assert sample("thunder_tool_reclaimed_resources_total",
                  {"kind": "directories", "reason": "release"}) == 1
    assert sample("thunder_tool_reclaimed_resources_total",
                  {"kind": "ports", "reason": "release"}) == 1
    assert sample("thunder_tool_disk_bytes") == 0
    assert sample("thunder_tool_ports_in_use") == 0


async def test_program_locks_do_not_outlive_their_programs(
        local_manager: EnvironmentManager) -> None:
    """A long soak must not grow the per-program lock table: each lock lives while a task
    holds or waits for it, and not a moment longer (issue: one lock per reclaim, for ever)."""
    spec = parse_spec({})
    for index in range(40):
        await local_manager.declare(f"t/soak{index}", spec)
        assert await local_manager.tool_intent(f"t/never{index}", ["shell"]) is None
        await local_manager.reclaim(f"t/soak{index}", reason="release")
        await local_manager.reclaim(f"t/never{index}", reason="release")  # had no environment
    assert local_manager._locks == {}
    assert not local_manager.live_programs()

    # while contended, every contender of a key queues on one lock, in arrival order
    order: list[str] = []
    entry_seen: list[object] = []

    async def hold(name: str, delay: float) -> None:
        async with local_manager._locked("t/busy"):
            entry_seen.append(local_manager._locks["t/busy"])
            order.append(name)
            await asyncio.sleep(delay)

    first = asyncio.create_task(hold("first", 0.2))
    await asyncio.sleep(0.05)
    waiters = [asyncio.create_task(hold(name, 0.0)) for name in ("second", "third")]
    await asyncio.sleep(0.01)
    assert local_manager._locks["t/busy"].users == 3
    await asyncio.gather(first, *waiters)
    assert order == ["first", "second", "third"]
    assert len({id(entry) for entry in entry_seen}) == 1
    assert local_manager._locks == {}

    # a waiter cancelled in the queue gives its place back and leaves no entry behind
    first = asyncio.create_task(hold("again", 0.1))
    await asyncio.sleep(0.02)
    cancelled = asyncio.create_task(hold("cancelled", 0.0))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await first
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert local_manager._locks == {}

    # a declaration racing a reclaim of the same program is still ordered by the lock
    declared = asyncio.create_task(local_manager.declare("t/race", spec))
    reclaimed = asyncio.create_task(local_manager.reclaim("t/race", reason="release"))
    await asyncio.gather(declared, reclaimed)
    assert not local_manager.live_programs() and local_manager._locks == {}
