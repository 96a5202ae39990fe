"""Start the twin and the sidecar as real server processes on loopback ports.

Tests, benchmarks and the demo all need "a running vLLM-like replica" and "a running
sidecar". Starting them as separate processes through the public CLI (rather than in-process
apps) is deliberate: it exercises real HTTP, real start-up and real shutdown, exactly what a
user gets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    """A port the OS considers free right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A server process we started; ``stop()`` is idempotent."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful SIGTERM first (the sidecar drains), SIGKILL if it does not go."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """Simulate a crash: no shutdown hooks run."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _wait_ready(server: RunningServer, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode} during start-up:\n"
                f"{server.log_tail()}"
            )
        try:
            response = httpx.get(server.url + path, timeout=2.0)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last_error = repr(exc)
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(
        f"{server.name} not ready after {timeout}s ({last_error}):\n{server.log_tail()}"
    )


def start_process(
    name: str,
    cli_args: Sequence[str],
    *,
    port: int,
    ready_path: str = "/health",
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
    module: str = "thunder_middleware",
) -> RunningServer:
    """Run ``python -m <module> <cli_args>`` (the thunder-middleware CLI unless told) and
    wait until ``ready_path`` is 200."""
    log_dir = log_dir or Path(os.environ.get("THUNDER_LOG_DIR", "/tmp/thunder-logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    args = [sys.executable, "-m", module, *cli_args]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
        )
    server = RunningServer(
        name=name, url=f"http://127.0.0.1:{port}", process=process, log_path=log_path, args=args
    )
    _wait_ready(server, ready_path, timeout)
    return server


def start_twin(
    *,
    port: int | None = None,
    gpu: str = "h100",
    model: str = "qwen3-8b",
    time_scale: float = 10.0,
    num_gpu_blocks: int | None = None,
    block_size: int | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> RunningServer:
    """An engine twin (``thunder-middleware sim``) on a loopback port."""
    port = port or free_port()
    args = ["sim", "--host", "127.0.0.1", "--port", str(port), "--gpu", gpu, "--model", model]
    args += ["--time-scale", str(time_scale)]
    if num_gpu_blocks is not None:
        args += ["--num-gpu-blocks", str(num_gpu_blocks)]
    if block_size is not None:
        args += ["--block-size", str(block_size)]
    args += list(extra_args)
    return start_process("twin", args, port=port, timeout=timeout)


def start_sidecar(
    backends: Sequence[str],
    *,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> RunningServer:
    """A sidecar (``thunder-middleware serve``) in front of ``backends``."""
    port = port or free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    for backend in backends:
        args += ["--backend", backend]
    args += list(extra_args)
    return start_process("sidecar", args, port=port, timeout=timeout, env=env)


@contextlib.contextmanager
def running(server: RunningServer) -> Iterator[RunningServer]:
    """Stop the server however the block ends."""
    try:
        yield server
    finally:
        server.stop()
