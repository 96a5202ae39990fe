"""The refusals of the security layer, independent of any web framework.

The sidecar turns a :class:`AccessRefused` into its OpenAI-style error body; keeping the
status here lets this package decide *what* is refused while the sidecar decides *how* it
is said on the wire.
"""

from __future__ import annotations


class AccessRefused(Exception):
    """A request refused by authentication, tenancy or a cap."""

    def __init__(self, status_code: int, message: str, *, code: str,
                 param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after


def unauthenticated(message: str) -> AccessRefused:
    return AccessRefused(401, message, code="invalid_api_key")


def over_cap(what: str, tenant: str, cap: int, retry_after: float) -> AccessRefused:
    return AccessRefused(
        429, f"tenant {tenant!r} already holds its limit of {cap} live {what}; release one "
        "(POST /programs/release) or retry later", code=f"too_many_{what}",
        retry_after=retry_after)
