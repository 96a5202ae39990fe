"""The ``thunder-middleware`` command.

Each subcommand lives next to the code it starts (``twin/cli.py``, ``sidecar/cli.py``, ...)
so this file only wires them together and stays free of their imports until used: starting
the twin must not pay for importing LiteLLM.
"""

from __future__ import annotations

import typer

from thunder_middleware.demo import demo
from thunder_middleware.sidecar.cli import serve
from thunder_middleware.twin.cli import sim

app = typer.Typer(
    name="thunder-middleware",
    help="Program-aware sidecar scheduler for LLM agents, and its vLLM engine twin.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("sim", help="Run the engine twin: an OpenAI server that behaves like a vLLM replica.")(
    sim
)
app.command("serve", help="Run the program-aware sidecar in front of vLLM backends.")(serve)
app.command("demo", help="Twin + sidecar + agent fleet, side by side with plain vLLM.")(demo)
