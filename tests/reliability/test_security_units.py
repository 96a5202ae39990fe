"""API keys, tenant configuration, caps and the bind rule, without any server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from thunder_middleware.security import (
    AccessRefused,
    Authenticator,
    SecurityConfig,
    TenantCaps,
    TenantConfig,
    UnsafeBindError,
    check_bind,
    hash_key,
    is_loopback,
    load_security_config,
    new_key,
    presented_key,
    verify_key,
)


def test_hash_is_salted_and_verifies_only_its_key() -> None:
    key = new_key()
    first, second = hash_key(key), hash_key(key)
    assert first != second  # a fresh salt each time
    assert key not in first
    assert verify_key(key, first) and verify_key(key, second)
    assert not verify_key(key + "x", first)
    assert not verify_key(key, "scrypt$bad")
    assert not verify_key(key, first.replace("scrypt", "md5", 1))


def test_plain_keys_are_refused_in_config() -> None:
    with pytest.raises(ValidationError, match="keys hash"):
        TenantConfig(name="a", keys=["sk-plain-key"], max_programs=None, max_environments=None)


def test_toml_and_env_merge(tmp_path: Path) -> None:
    key_a, key_b, key_c = new_key(), new_key(), new_key()
    toml = tmp_path / "sidecar.toml"
    toml.write_text(f'default_max_programs = 7\n[[tenants]]\nname = "alpha"\n'
                    f'keys = ["{hash_key(key_a)}"]\nmax_programs = 2\n')
    config = load_security_config(toml, {"THUNDER_API_KEYS": f"alpha:{hash_key(key_b)},"
                                                            f" beta:{hash_key(key_c)}"})
    assert config.auth_enabled
    assert len(config.tenant("alpha").keys) == 2  # type: ignore[union-attr]
    assert config.max_programs("alpha") == 2 and config.max_programs("beta") == 7
    ring = config.key_ring()
    assert ring.tenant_of(key_a) == "alpha" and ring.tenant_of(key_b) == "alpha"
    assert ring.tenant_of(key_c) == "beta" and ring.tenant_of("nope") is None
    assert ring.cached(key_a) and ring.tenant_of(key_a) == "alpha"  # the cached path agrees
    with pytest.raises(ValueError, match="tenant:hash"):
        load_security_config(None, {"THUNDER_API_KEYS": "no-separator"})


def test_authenticator_resolves_and_refuses() -> None:
    key = new_key()
    auth = Authenticator(SecurityConfig(tenants=[TenantConfig(
        name="alpha", keys=[hash_key(key)], max_programs=None, max_environments=None)]))

    async def tenant(headers: dict[str, str]) -> str:
        return await auth.tenant_of(headers)

    assert asyncio.run(tenant({"authorization": f"Bearer {key}"})) == "alpha"
    assert asyncio.run(tenant({"x-api-key": key})) == "alpha"
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {key}"},
                    {"x-api-key": "x" * 10_000}):
        with pytest.raises(AccessRefused) as refused:
            asyncio.run(tenant(headers))
        assert refused.value.status_code == 401
    open_auth = Authenticator(SecurityConfig.model_validate({}))
    assert asyncio.run(open_auth.tenant_of({"authorization": "Bearer EMPTY"})) == "default"


def test_presented_key_precedence() -> None:
    assert presented_key({"authorization": "Bearer a", "x-api-key": "b"}) == "a"
    assert presented_key({"authorization": "Bearer  ", "x-api-key": "b"}) == "b"
    assert presented_key({}) is None


def test_caps_refuse_with_429_and_retry_after() -> None:
    config = SecurityConfig(tenants=[TenantConfig(name="a", keys=[], max_programs=2,
                                                  max_environments=0)])
    caps = TenantCaps(config, retry_after_s=3)
    caps.admit_program("a", 1)
    caps.admit_program("other", 10_000)  # no cap configured
    with pytest.raises(AccessRefused) as refused:
        caps.admit_program("a", 2)
    assert refused.value.status_code == 429 and refused.value.retry_after == 3
    with pytest.raises(AccessRefused):
        caps.admit_environment("a", 0)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("127.0.0.2", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
    ("example.com", False)])
def test_bind_rule(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        check_bind(host, auth_enabled=False, allow_unauthenticated_remote=False)
    else:
        with pytest.raises(UnsafeBindError):
            check_bind(host, auth_enabled=False, allow_unauthenticated_remote=False)
    check_bind(host, auth_enabled=True, allow_unauthenticated_remote=False)
    check_bind(host, auth_enabled=False, allow_unauthenticated_remote=True)


def test_keys_command_hashes_and_makes_keys() -> None:
    import typer
    from typer.testing import CliRunner

    from thunder_middleware.security.cli import keys

    app = typer.Typer()
    app.command()(keys)
    runner = CliRunner()
    hashed = runner.invoke(app, ["hash", "--key", "tm-secret"])
    assert hashed.exit_code == 0 and verify_key("tm-secret", hashed.stdout.strip())
    from_stdin = runner.invoke(app, ["hash"], input="tm-secret\n")
    assert verify_key("tm-secret", from_stdin.stdout.strip())
    made = runner.invoke(app, ["new", "--tenant", "alpha"])
    key_line, config_line = made.stdout.strip().splitlines()
    key = key_line.split()[-1]
    tenant, _, digest = config_line.removeprefix("THUNDER_API_KEYS=").partition(":")
    assert tenant == "alpha" and verify_key(key, digest)
    assert runner.invoke(app, ["explode"]).exit_code == 2
