"""Sample a process's memory, file descriptors and sockets from /proc while a run goes on.

Shared by benchmarks/load.py and benchmarks/soak.py: both must show that the sidecar does not
grow under load or over time, and /proc is the one source that needs no cooperation from
the process being watched.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class ProcSample:
    t: float
    rss_mib: float
    fds: int
    sockets: int
    cpu_s: float  # user + system CPU seconds of the process so far


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def sample(pid: int, started: float = 0.0) -> ProcSample:
    rss_kib = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
                break
    fds = sockets = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                sockets += 1
        except OSError:
            continue  # closed between listdir and readlink
    return ProcSample(time.monotonic() - started, rss_kib / 1024, fds, sockets, cpu_seconds(pid))


@dataclass
class ProcSampler:
    """A background thread sampling ``pid`` every ``period_s``."""

    pid: int
    period_s: float = 0.25
    samples: list[ProcSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ProcSampler:
        started = time.monotonic()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.samples.append(sample(self.pid, started))
                except OSError:
                    return  # the process is gone
                self._stop.wait(self.period_s)

        self._thread = threading.Thread(target=loop, name="proc-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def peak_rss_mib(self) -> float:
        return max((s.rss_mib for s in self.samples), default=0.0)

    @property
    def peak_fds(self) -> int:
        return max((s.fds for s in self.samples), default=0)
