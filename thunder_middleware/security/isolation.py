"""The isolation rule: tenants that do not trust each other get environments that isolate.

Why: the local provider runs every tenant's commands as the sidecar's own user, in plain
directories, with the sidecar's view of the file system and processes (see
docs/SECURITY.md). With one tenant that is the operator's own business; with two or more, one
tenant could read another's files, its program ids in the store, or the key hashes in the
sidecar's environment. Starting up is refused unless the operator says that the tenants trust
each other, or picks a provider that isolates (docker, kubernetes).
"""

from __future__ import annotations


class UnsafeIsolationError(ValueError):
    """Start-up refused: several tenants would share the local provider."""


def check_isolation(*, tenants: int, provider: str, tenants_trusted: bool) -> None:
    """Raise UnsafeIsolationError when ``tenants`` (with keys) would share local
    environments without the operator's say-so."""
    if tenants < 2 or provider != "local" or tenants_trusted:
        return
    raise UnsafeIsolationError(
        f"refusing to run {tenants} tenants on the local environment provider: it runs every "
        "tenant's commands as the sidecar's user with no isolation between them (see "
        "docs/SECURITY.md). Use --env-provider docker (or kubernetes), or "
        "--env-provider none, or pass --trust-local-tenants if the tenants trust each other")
