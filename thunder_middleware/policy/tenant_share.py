"""Fair share between tenants: what one tenant may hold of the backends' KV cache and calls.

Pure (no clock, no I/O): the sidecar's tenant gate asks :meth:`TenantShare.fits` before a
call of a tenant reaches the program policy, and reports each call's start and end.

Invariant: a tenant's calls in flight never hold more than its share of the KV capacity
(``capacity * weight / sum of all configured weights``, equal weights by default), nor more
than ``max_inflight`` calls, so that whatever one tenant sends, the others find their share
free. The share is not work-conserving on purpose: a tenant idle now may send at any moment,
and a call once admitted cannot be taken back. One exception keeps a tenant from starving: a
tenant with nothing in flight may always send one call, however large.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TenantShare:
    weights: dict[str, float]  # configured tenants; a tenant not named weighs 1
    max_inflight: int | None = None  # calls in flight per tenant; None = no cap
    capacity_tokens: int = 0  # KV tokens of the healthy backends; 0 = unknown (no token cap)
    _calls: dict[str, int] = field(default_factory=dict)
    _tokens: dict[str, int] = field(default_factory=dict)

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, 1.0)

    def share_tokens(self, tenant: str) -> float:
        total = sum(self.weights.values()) + (0.0 if tenant in self.weights else 1.0)
        return self.capacity_tokens * self.weight(tenant) / total if total else 0.0

    def in_flight(self, tenant: str) -> tuple[int, int]:
        """(calls, tokens) the tenant holds now."""
        return self._calls.get(tenant, 0), self._tokens.get(tenant, 0)

    def fits(self, tenant: str, tokens: int) -> bool:
        calls, used = self.in_flight(tenant)
        if self.max_inflight is not None and calls >= self.max_inflight:
            return False
        if calls == 0 or self.capacity_tokens <= 0:
            return True
        return used + tokens <= self.share_tokens(tenant)

    def started(self, tenant: str, tokens: int) -> None:
        self._calls[tenant] = self._calls.get(tenant, 0) + 1
        self._tokens[tenant] = self._tokens.get(tenant, 0) + tokens

    def ended(self, tenant: str, tokens: int) -> None:
        calls = self._calls.get(tenant, 0) - 1
        used = self._tokens.get(tenant, 0) - tokens
        if calls <= 0:
            self._calls.pop(tenant, None)
            self._tokens.pop(tenant, None)
        else:
            self._calls[tenant] = calls
            self._tokens[tenant] = max(0, used)
