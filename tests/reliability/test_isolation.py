"""Several tenants on the local environment provider, which does not isolate them: the
sidecar refuses to start unless told that the tenants trust each other."""

from __future__ import annotations

import httpx
import pytest

from tests.sidecar.conftest import STRICT_POLICY
from thunder_middleware.launch import RunningServer, start_sidecar
from thunder_middleware.security import hash_key, new_key

LOCAL = [flag for flag in STRICT_POLICY if flag not in ("--env-provider", "none")]
TWO_TENANTS = {"THUNDER_API_KEYS": f"a:{hash_key(new_key())},b:{hash_key(new_key())}"}


def test_two_tenants_on_the_local_provider_are_refused(fast_twin: RunningServer) -> None:
    try:
        started = start_sidecar([fast_twin.url], extra_args=[*LOCAL, "--env-provider", "local"],
                                env=TWO_TENANTS, timeout=30)
    except RuntimeError as refused:
        message = str(refused)
    else:
        started.stop()
        pytest.fail("the sidecar started with two tenants on the local provider")
    assert "exited with 2" in message and "--trust-local-tenants" in message, message
    assert "SECURITY.md" in message


@pytest.mark.parametrize("flags,env", [
    (["--env-provider", "local", "--trust-local-tenants"], TWO_TENANTS),
    (["--env-provider", "none"], TWO_TENANTS),
    (["--env-provider", "local"], {"THUNDER_API_KEYS": f"solo:{hash_key(new_key())}"}),
], ids=["trusted", "no-environments", "one-tenant"])
def test_the_sidecar_starts_when_isolation_is_not_needed(
        fast_twin: RunningServer, flags: list[str], env: dict[str, str]) -> None:
    server = start_sidecar([fast_twin.url], extra_args=[*LOCAL, *flags], env=env, timeout=30)
    try:
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    finally:
        server.stop()
