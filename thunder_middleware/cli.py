"""The ``thunder-middleware`` command.

Each subcommand lives next to the code it starts (``twin/cli.py``, ``sidecar/cli.py``, ...)
so this file only wires them together.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="thunder-middleware",
    help="Program-aware sidecar scheduler for LLM agents, and its vLLM engine twin.",
    no_args_is_help=True,
    add_completion=False,
)

_COMMANDS = {
    "sim": ("thunder_middleware.twin.cli", "sim", "Run the engine twin: a vLLM replica stand-in."),
    "serve": ("thunder_middleware.sidecar.cli", "serve", "Run the program-aware sidecar."),
    "demo": ("thunder_middleware.demo", "demo", "Twin + sidecar + agent fleet vs plain vLLM."),
}

for _name, (_module, _attr, _help) in _COMMANDS.items():
    try:
        _function = getattr(importlib.import_module(_module), _attr)
    except ModuleNotFoundError as _exc:  # TEMPORARY during parallel development
        if _exc.name is None or not _module.startswith(_exc.name):
            raise
        continue
    app.command(_name, help=_help)(_function)
