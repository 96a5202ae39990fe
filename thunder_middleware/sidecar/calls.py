"""The calls one HTTP request holds, ended together when its answer is over.

Invariant: every lease a request takes is ended (``SchedulerRuntime.complete``) by the time
the request's ASGI call returns or raises, whatever raised and wherever: parsing, headers,
encoding, the store, the upstream, the client. The proxy ends a call where it knows how it
went (usage, outcome); :meth:`OpenCalls.close`, run in the ``finally`` of the one function
that serves a completion request, ends whatever is left, so no path needs its own handler.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, MutableMapping
from typing import Any

from thunder_middleware.sidecar.runtime import Lease, SchedulerRuntime

log = logging.getLogger(__name__)

CALLS_KEY = "thunder.calls"


class OpenCalls:
    """The leases and answer streams of one request."""

    __slots__ = ("leases", "runtime", "streams")

    def __init__(self, runtime: SchedulerRuntime) -> None:
        self.runtime = runtime
        self.leases: list[Lease] = []
        self.streams: list[AsyncGenerator[bytes, None]] = []

    @property
    def aborted(self) -> bool:
        """Whether the sidecar cut one of these calls short (a release, the watchdog)."""
        return any(lease.abort_reason is not None for lease in self.leases)

    async def close(self, outcome: str) -> None:
        """End every stream and lease still open. Never raises: it runs in a ``finally``."""
        for stream in self.streams:
            # a relay suspended at a yield (its client stopped reading) ends its call in
            # its own finally; closing it runs that now instead of at garbage collection
            with contextlib.suppress(Exception):
                await stream.aclose()
        for lease in self.leases:
            if lease.ended:
                continue
            try:
                self.runtime.complete(
                    lease, usage=None, outcome="aborted" if outcome == "aborted" else "failed",
                    stream=False, first_token_s=None,
                    total_s=time.perf_counter() - lease.arrival - lease.queue_wait_s)
            except Exception:
                log.exception("ending a call of %s failed", lease.key)
                lease.ended = True
                self.runtime.inflight.discard(lease)


def open_calls(scope: MutableMapping[str, Any]) -> OpenCalls | None:
    calls: OpenCalls | None = scope.get(CALLS_KEY)
    return calls
