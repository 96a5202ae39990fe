"""Who is calling: the tenant named by the request's API key.

Keys come the two ways OpenAI-style clients send them: ``Authorization: Bearer <key>`` (the
OpenAI SDK) and ``x-api-key`` (Anthropic-style clients, curl users). With authentication off
every caller is the ``default`` tenant and any key sent is ignored (SDKs always send one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from thunder_middleware.security.config import SecurityConfig
from thunder_middleware.security.errors import unauthenticated
from thunder_middleware.security.keys import KeyRing
from thunder_middleware.security.throttle import FailedKeyThrottle

DEFAULT_TENANT = "default"


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key in ``headers``, if any (Bearer first, then x-api-key)."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class Authenticator:
    """Resolves the tenant of a request, or refuses it with 401."""

    def __init__(self, config: SecurityConfig,
                 throttle: FailedKeyThrottle | None = None) -> None:
        self.config = config
        self.ring: KeyRing = config.key_ring()
        self.throttle = throttle

    @property
    def enabled(self) -> bool:
        return self.ring.enabled

    async def tenant_of(self, headers: Mapping[str, str], address: str | None = None) -> str:
        """The caller's tenant; AccessRefused(401) for a missing or unknown key, 429 when
        ``address`` spent its failed checks (see ``throttle``).

        A key not yet verified costs one scrypt, run off the event loop so that a burst of
        new (or wrong) keys cannot stall the requests already flowing.
        """
        if not self.enabled:
            return DEFAULT_TENANT
        key = presented_key(headers)
        if key is None:
            raise unauthenticated("missing API key: send 'Authorization: Bearer <key>' or "
                                  "'x-api-key: <key>'")
        if self.ring.cached(key):
            tenant = self.ring.tenant_of(key)
        else:
            if self.throttle is not None:
                self.throttle.admit(address)
            tenant = await asyncio.to_thread(self.ring.tenant_of, key)
            if tenant is None and self.throttle is not None:
                self.throttle.failed(address)
        if tenant is None:
            raise unauthenticated("invalid API key")
        return tenant
