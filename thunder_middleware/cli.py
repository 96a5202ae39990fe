"""The ``thunder-middleware`` command.

Each subcommand lives next to the code it starts (``twin/cli.py``, ``sidecar/cli.py``, ...)
so this file only wires them together. Those modules keep their heavy imports inside the
command functions: starting the twin must not pay for importing LangChain.
"""

from __future__ import annotations

import typer

from thunder_middleware.demo import demo
from thunder_middleware.security.cli import keys
from thunder_middleware.sidecar.cli import PlainHelpCommand, serve
from thunder_middleware.trace_cli import trace_app
from thunder_middleware.twin.cli import sim

app = typer.Typer(
    name="thunder-middleware",
    help="Program-aware sidecar scheduler for LLM agents, and its vLLM engine twin.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("sim", help="Run the engine twin: a vLLM replica stand-in.")(sim)
app.command("serve", help="Run the program-aware sidecar in front of vLLM backends.",
            cls=PlainHelpCommand)(serve)
app.command("demo", help="Twin + sidecar + agent fleet, side by side with plain vLLM.")(demo)
app.command("keys", help="API keys: `keys new` makes one, `keys hash` hashes one.")(keys)
app.add_typer(trace_app, name="trace", help="Workload traces: `trace save`, `trace show`.")
