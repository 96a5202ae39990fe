"""Where a tenant's calls wait for its fair share (``policy.tenant_share``), before the
program gate.

Invariant: every call let through is reported back exactly once (:meth:`TenantGate.leave`,
from the runtime's idempotent ``complete`` or from ``acquire``'s own failure paths), and each
leave lets the tenant's next waiting calls through in arrival order. A waiting call costs a
future, no polling; a client that hangs up leaves the queue (``unless_disconnected``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from thunder_middleware.policy.tenant_share import TenantShare
from thunder_middleware.sidecar.gates import Receive, unless_disconnected


class TenantGate:
    def __init__(self, share: TenantShare, capacity: Callable[[], int]) -> None:
        self.share = share
        self._capacity = capacity
        self._waiting: dict[str, deque[tuple[asyncio.Future[None], int]]] = {}

    def waiting_count(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    async def enter(self, tenant: str, tokens: int, receive: Receive) -> None:
        """Return once ``tenant`` may send a call of ``tokens``; raises ClientDisconnected
        when the client leaves first."""
        self.share.capacity_tokens = self._capacity()
        queue = self._waiting.get(tenant)
        if not queue and self.share.fits(tenant, tokens):
            self.share.started(tenant, tokens)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (future, tokens)
        self._waiting.setdefault(tenant, deque()).append(entry)
        try:
            await unless_disconnected(asyncio.shield(future), receive)
        except BaseException:
            if future.done() and not future.cancelled():
                self.leave(tenant, tokens)  # let through as the client left: give it back
            else:
                future.cancel()
                self._forget(tenant, entry)
            raise

    def leave(self, tenant: str, tokens: int) -> None:
        self.share.ended(tenant, tokens)
        self._wake(tenant)

    def _forget(self, tenant: str, entry: tuple[asyncio.Future[None], int]) -> None:
        queue = self._waiting.get(tenant)
        if queue is not None and entry in queue:
            queue.remove(entry)
        if queue is not None and not queue:
            del self._waiting[tenant]
        self._wake(tenant)

    def _wake(self, tenant: str) -> None:
        queue = self._waiting.get(tenant)
        self.share.capacity_tokens = self._capacity()
        while queue:
            future, tokens = queue[0]
            if future.done():
                queue.popleft()
                continue
            if not self.share.fits(tenant, tokens):
                break
            queue.popleft()
            self.share.started(tenant, tokens)
            future.set_result(None)
        if queue is not None and not queue:
            self._waiting.pop(tenant, None)
