"""The bind rule: an unauthenticated sidecar listens on loopback only.

Why: the sidecar can run commands in tool environments (``/programs/{id}/exec``), so an open
port without keys is a remote shell. Starting up is refused unless keys are configured or
the operator says explicitly that the network in front is trusted.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``0.0.0.0`` and ``::`` do not)."""
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class UnsafeBindError(ValueError):
    """Start-up refused: a non-loopback bind without authentication."""


def check_bind(host: str, *, auth_enabled: bool, allow_unauthenticated_remote: bool) -> None:
    """Raise UnsafeBindError when the sidecar would be open to the network without keys."""
    if auth_enabled or allow_unauthenticated_remote or is_loopback(host):
        return
    raise UnsafeBindError(
        f"refusing to listen on {host!r} without API keys: configure [[tenants]] keys or "
        "THUNDER_API_KEYS, bind 127.0.0.1, or pass --allow-unauthenticated-remote if the "
        "network in front of the sidecar is trusted")
