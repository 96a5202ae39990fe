"""A throttle on failed API-key checks, per client address.

Invariant: checking an unknown key costs one scrypt (tens of ms of CPU, off the event loop),
so a client sending fresh wrong keys buys CPU that valid clients need. Each address gets a
bucket of ``burst`` such checks, refilled at ``per_s`` a second; an address whose bucket is
empty is refused with 429 before any scrypt runs. Keys already checked (cached) never pass
here: a valid client whose key is known is never slowed, whoever shares its address.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from thunder_middleware.security.errors import AccessRefused

MAX_ADDRESSES = 10_000  # buckets kept; the oldest go first (memory stays bounded)


class FailedKeyThrottle:
    def __init__(self, burst: int = 10, per_s: float = 1.0,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.burst = burst
        self.per_s = per_s
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.per_s)

    def admit(self, address: str | None) -> None:
        """Raise AccessRefused(429) when ``address`` spent its failed checks."""
        if address is None:
            return
        now = time.monotonic()
        tokens = self._tokens(address, now)
        if tokens < 1.0:
            raise AccessRefused(
                429, "too many failed API key checks from this address; retry later",
                code="too_many_failed_keys", retry_after=(1.0 - tokens) / self.per_s)

    def failed(self, address: str | None) -> None:
        """Count one failed (uncached) check against ``address``."""
        if address is None:
            return
        now = time.monotonic()
        self._buckets[address] = (self._tokens(address, now) - 1.0, now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
