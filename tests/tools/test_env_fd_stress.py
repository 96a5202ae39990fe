"""File-descriptor ownership of the local provider under churn (the soak's EBADF leak).

Many environments at once; execs cut by short timeouts, cancelled at random points (a client
abandoning its call) and racing the environment's destroy. Every fd the command-running path
opens must be closed exactly once: a double close lands on a recycled number that belongs to
someone else (a socket, the store, ``shutil.rmtree``'s directory fd in a worker thread), which
is how reclaims failed with EBADF and left their directories behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from thunder_middleware.tools import LocalProvider, parse_spec
from thunder_middleware.tools.providers.base import Instance, OutputBuffer, Placement
from thunder_middleware.tools.providers.pipes import CommandPipes
from thunder_middleware.tools.providers.processes import processes_with

VICTIM_FILE = "fd-victim.txt"
ENVIRONMENTS = 12
EXECS_PER_ENV = 10
COMMANDS = ["true", "echo out; echo err >&2", "sleep 0.05; echo late", "sleep 5 & echo bg",
            "sleep 3"]


def _open_fds() -> set[int]:
    """This process's descriptors, less the victim threads' files (they come and go)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if not os.readlink(f"/proc/self/fd/{name}").endswith(VICTIM_FILE):
                found.add(int(name))
    return found


class FdVictim:
    """A thread that keeps opening, checking and closing its own files, as ``rmtree`` and the
    SQLite store do off the loop: any EBADF it meets is someone else closing its fd."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / VICTIM_FILE
        self.path.write_bytes(b"x" * 64)
        self.errors: list[OSError] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fds = [os.open(self.path, os.O_RDONLY) for _ in range(4)]
            except OSError as exc:
                self.errors.append(exc)
                continue
            for fd in fds:
                try:
                    os.fstat(fd)
                    os.close(fd)
                except OSError as exc:
                    self.errors.append(exc)

    def __enter__(self) -> FdVictim:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


async def _read_pipes_many_times(rounds: int) -> set[int]:
    """Returns the descriptors left open."""
    before = _open_fds()
    for _ in range(rounds):
        with CommandPipes(OutputBuffer(16), OutputBuffer(16)) as pipes:
            os.write(pipes.stdout_write, b"out")
            pipes.child_started()  # closes the write ends: EOF right after the data
            await pipes.drained(5)
    return _open_fds() - before


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_pipe_reading_closes_only_its_own_descriptors(tmp_path: Path, loop_name: str) -> None:
    """The narrow reproduction: with ``connect_read_pipe(os.fdopen(fd))`` under uvloop, threads
    opening files meanwhile lost theirs within a few hundred rounds (EBADF, or a pipe of ours
    closed under us as "Broken pipe"); each round here closes four descriptors once."""
    loop_factory = asyncio.new_event_loop if loop_name == "asyncio" else uvloop.new_event_loop
    with FdVictim(tmp_path) as victim, asyncio.Runner(loop_factory=loop_factory) as runner:
        leaked = runner.run(_read_pipes_many_times(3000))
    assert victim.errors == []
    assert leaked == set()


async def _churn(provider: LocalProvider, index: int, rng: random.Random) -> None:
    env_id = f"fd-{index}"
    instance: Instance = await provider.create(Placement(
        env_id=env_id, owner=f"t/fd{index}", instance_id="fd-stress", spec=parse_spec({}),
        host_ports={}, labels={}))

    async def one_exec(command: str) -> None:
        task = asyncio.ensure_future(provider.exec(
            instance, ["sh", "-c", command], timeout_s=rng.choice([0.01, 0.05, 0.3, 5])))
        if rng.random() < 0.5:  # a client abandoning its call at some point of the exec
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.01, 0.05, 0.25]))
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    execs = [asyncio.ensure_future(one_exec(rng.choice(COMMANDS)))
             for _ in range(EXECS_PER_ENV)]
    await asyncio.sleep(rng.uniform(0, 0.3))
    await provider.destroy(instance)  # races the execs still running
    await asyncio.gather(*execs, return_exceptions=True)
    await provider.destroy(instance)  # idempotent, and catches what started after the first


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,  # the sidecar's loop, where the double close was
}


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_execs_cancelled_and_racing_destroy_close_each_fd_once(
    tmp_path: Path, loop_name: str
) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(_stress(tmp_path))


async def _stress(tmp_path: Path) -> None:
    root = tmp_path / "envs"
    provider = LocalProvider(root)
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    rng = random.Random(7)
    await asyncio.sleep(0.1)
    before = _open_fds()
    with FdVictim(tmp_path) as victim:
        await asyncio.gather(*(_churn(provider, index, rng) for index in range(ENVIRONMENTS)))
    await asyncio.sleep(0.5)  # transports close their pipes one loop iteration later

    assert victim.errors == [], "someone closed a file descriptor it did not own"
    assert [context.get("exception") or context["message"] for context in loop_errors] == []
    assert sorted(path.name for path in root.iterdir()) == []
    assert provider.removal_failures == 0
    for index in range(ENVIRONMENTS):
        assert processes_with("THUNDER_ENV_ID", f"fd-{index}") == []
    leaked = _open_fds() - before
    assert leaked == set(), {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked
                             if os.path.exists(f"/proc/self/fd/{fd}")}
