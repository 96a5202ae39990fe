"""``thunder-middleware keys hash|new``: API keys and the hashes the sidecar is configured with.

One command with an action argument (rather than a typer sub-app) so that it plugs into the
top-level ``_COMMANDS`` table like every other command.
"""

from __future__ import annotations

import sys

import typer

from thunder_middleware.security.keys import hash_key, new_key


def keys(
    action: str = typer.Argument(..., help="hash: hash a key (--key or stdin); new: make one."),
    key: str = typer.Option(None, "--key", help="The key to hash (default: one stdin line)."),
    tenant: str = typer.Option("default", help="Tenant named in the printed config line."),
) -> None:
    """API keys: `keys hash` prints the salted scrypt hash of a key; `keys new` makes a key
    and prints it once, with the THUNDER_API_KEYS entry that holds only its hash."""
    if action not in ("hash", "new"):
        typer.echo(f"unknown action {action!r}: use 'hash' or 'new'", err=True)
        raise typer.Exit(2)
    if action == "new":
        fresh = new_key()
        typer.echo(f"key:  {fresh}")
        typer.echo(f"THUNDER_API_KEYS={tenant}:{hash_key(fresh)}")
        return
    value = key if key is not None else sys.stdin.readline().strip()
    if not value:
        typer.echo("no key given (--key or one line on stdin)", err=True)
        raise typer.Exit(2)
    typer.echo(hash_key(value))
