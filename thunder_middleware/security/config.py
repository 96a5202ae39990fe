"""Who may call the sidecar: tenants, their key hashes and their caps, from TOML or env.

Two sources, merged: a TOML file's ``[[tenants]]`` tables (name, keys, max_programs,
max_environments) and ``THUNDER_API_KEYS`` (``tenant:hash,tenant:hash``), the form that fits a
container's environment. No tenants configured means authentication is off and every
caller is the ``default`` tenant, which is only allowed on a loopback bind (see bind.py).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thunder_middleware.security.keys import KeyEntry, KeyRing, check_hash_format

API_KEYS_ENV = "THUNDER_API_KEYS"


class TenantConfig(BaseModel):
    """One tenant: its key hashes and what it may hold at once."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    keys: list[str] = Field(default_factory=list)
    max_programs: int | None = Field(default=None, ge=1, description="live programs at once")
    max_environments: int | None = Field(default=None, ge=0,
                                         description="tool environments at once")
    weight: float = Field(default=1.0, gt=0,
                          description="share of each backend's KV against the other tenants")

    @field_validator("keys")
    @classmethod
    def _hashes_only(cls, value: list[str]) -> list[str]:
        return [check_hash_format(item) for item in value]


class SecurityConfig(BaseModel):
    """The tenants plus defaults for tenants that set no cap of their own."""

    model_config = ConfigDict(extra="ignore")

    tenants: list[TenantConfig] = Field(default_factory=list)
    default_max_programs: int | None = Field(default=None, ge=1)
    default_max_environments: int | None = Field(default=None, ge=0)

    @field_validator("tenants")
    @classmethod
    def _unique_names(cls, value: list[TenantConfig]) -> list[TenantConfig]:
        names = [tenant.name for tenant in value]
        if len(names) != len(set(names)):
            raise ValueError("tenant names must be unique")
        return value

    @property
    def auth_enabled(self) -> bool:
        return any(tenant.keys for tenant in self.tenants)

    def key_ring(self) -> KeyRing:
        return KeyRing(KeyEntry(tenant.name, hashed)
                       for tenant in self.tenants for hashed in tenant.keys)

    def tenant(self, name: str) -> TenantConfig | None:
        return next((tenant for tenant in self.tenants if tenant.name == name), None)

    def max_programs(self, name: str) -> int | None:
        tenant = self.tenant(name)
        own = tenant.max_programs if tenant else None
        return own if own is not None else self.default_max_programs

    def max_environments(self, name: str) -> int | None:
        tenant = self.tenant(name)
        own = tenant.max_environments if tenant else None
        return own if own is not None else self.default_max_environments


def parse_api_keys_env(value: str) -> list[TenantConfig]:
    """``tenant:hash,tenant:hash`` -> tenants (several hashes of one tenant are merged)."""
    keys: dict[str, list[str]] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        tenant, sep, hashed = item.partition(":")
        if not sep or not tenant or not hashed:
            raise ValueError(f"{API_KEYS_ENV} entries are 'tenant:hash', got {item[:40]!r}")
        keys.setdefault(tenant.strip(), []).append(hashed.strip())
    return [TenantConfig(name=name, keys=hashes)
            for name, hashes in keys.items()]


def load_security_config(toml_path: Path | None = None, env: dict[str, str] | None = None,
                         **defaults: Any) -> SecurityConfig:
    """Merge the TOML file's tenants with THUNDER_API_KEYS (keys of one name are joined)."""
    data: dict[str, Any] = {}
    if toml_path is not None:
        with toml_path.open("rb") as handle:
            data = tomllib.load(handle)
    config = SecurityConfig.model_validate(
        {"tenants": data.get("tenants", []),
         **{k: v for k, v in data.items() if k.startswith("default_max_")},
         **{k: v for k, v in defaults.items() if v is not None}})
    return merge_api_keys(config, (env or {}).get(API_KEYS_ENV, ""))


def merge_api_keys(config: SecurityConfig, api_keys: str) -> SecurityConfig:
    """Add the ``tenant:hash,...`` keys to ``config`` (joining tenants of the same name)."""
    for extra in parse_api_keys_env(api_keys):
        known = config.tenant(extra.name)
        if known is None:
            config.tenants.append(extra)
        else:
            known.keys.extend(extra.keys)
    return config
