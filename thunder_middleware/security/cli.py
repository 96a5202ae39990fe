"""``thunder-middleware keys``: make API keys and the hashes the sidecar is configured with."""

from __future__ import annotations

import sys

import typer

from thunder_middleware.security.keys import hash_key, new_key

keys_app = typer.Typer(help="API keys: generate keys and their at-rest hashes.",
                       no_args_is_help=True)


@keys_app.command("hash")
def hash_command(
    key: str = typer.Option(None, "--key", help="The key to hash (default: read from stdin)."),
) -> None:
    """Print the salted scrypt hash of a key, for [[tenants]] keys or THUNDER_API_KEYS."""
    value = key if key is not None else sys.stdin.readline().strip()
    if not value:
        typer.echo("no key given (--key or one line on stdin)", err=True)
        raise typer.Exit(2)
    typer.echo(hash_key(value))


@keys_app.command("new")
def new_command(
    tenant: str = typer.Option("default", help="Tenant the key is for (printed config line)."),
) -> None:
    """Generate a random key; print it once, with the config line holding only its hash."""
    key = new_key()
    typer.echo(f"key:  {key}")
    typer.echo(f"THUNDER_API_KEYS={tenant}:{hash_key(key)}")
