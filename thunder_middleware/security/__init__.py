"""API keys, tenants, caps and request limits (issue 7).

Framework-free where possible: the sidecar plugs :class:`Authenticator` into its tenancy
resolver, :class:`TenantCaps` into program admission, :class:`RequestLimits` around its ASGI
app and :func:`check_bind` into start-up.
"""

from thunder_middleware.security.auth import DEFAULT_TENANT, Authenticator, presented_key
from thunder_middleware.security.bind import UnsafeBindError, check_bind, is_loopback
from thunder_middleware.security.config import (
    API_KEYS_ENV,
    SecurityConfig,
    TenantConfig,
    load_security_config,
    parse_api_keys_env,
)
from thunder_middleware.security.errors import AccessRefused
from thunder_middleware.security.keys import KeyEntry, KeyRing, hash_key, new_key, verify_key
from thunder_middleware.security.limits import RequestLimits, TenantCaps

__all__ = [
    "API_KEYS_ENV",
    "DEFAULT_TENANT",
    "AccessRefused",
    "Authenticator",
    "KeyEntry",
    "KeyRing",
    "RequestLimits",
    "SecurityConfig",
    "TenantCaps",
    "TenantConfig",
    "UnsafeBindError",
    "check_bind",
    "hash_key",
    "is_loopback",
    "load_security_config",
    "new_key",
    "parse_api_keys_env",
    "presented_key",
    "verify_key",
]
