"""A LangGraph coding agent whose shell and file tools run in its program's environment.

Run against a running demo stack (twin + sidecar):

    THUNDER_SIDECAR_URL=http://127.0.0.1:9000 python examples/langgraph_coding_agent.py --agents 3

or let the script start its own stack: ``python examples/langgraph_coding_agent.py --start-stack``.
Each agent is one program: the sidecar prepares its environment when it registers, sees the
program id on every model call, is told about each tool call before it runs, executes the
tools in the environment, and reclaims everything when the agent finishes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Iterator

from thunder_middleware.agents import run_coding_agent
from thunder_middleware.integrations.client import ThunderClient, default_sidecar_url

TASKS = [
    "Create hello.py that prints 'hello', run it, and report the output.",
    "List the working directory, write notes.txt with a summary, and read it back.",
    "Write a failing test in test_math.py, run it, then fix it.",
    "Find the largest file in the working directory and describe it.",
]


@contextlib.contextmanager
def demo_stack(start: bool) -> Iterator[str]:
    """The sidecar URL: the one configured, or a fresh twin + sidecar started here."""
    if not start:
        yield default_sidecar_url()
        return
    from thunder_middleware.launch import start_sidecar, start_twin

    twin = start_twin(time_scale=100.0)
    sidecar = start_sidecar([twin.url])
    try:
        yield sidecar.url
    finally:
        sidecar.stop()
        twin.stop()


async def main(sidecar_url: str, agents: int, preset: str) -> None:
    results = await asyncio.gather(*(
        run_coding_agent(TASKS[i % len(TASKS)], base_url=sidecar_url, preset=preset,
                         program_id=f"coding-example-{os.getpid()}-{i}")
        for i in range(agents)))
    with ThunderClient(sidecar_url) as client:
        for result in results:
            seen = client.program(result.program_id) or {}
            summary = seen.get("summary", {})
            print(f"{result.program_id}: {result.model_calls} model calls, "
                  f"tools {result.tool_calls}; sidecar saw {summary.get('steps')} steps, "
                  f"prefix hit rate {summary.get('prefix_hit_rate')}, "
                  f"status {seen.get('status')} ({seen.get('terminated_reason')})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--preset", default="local-shell",
                        help="environment preset (local-shell needs no container engine)")
    parser.add_argument("--start-stack", action="store_true",
                        help="start a twin + sidecar instead of using THUNDER_SIDECAR_URL")
    args = parser.parse_args()
    with demo_stack(args.start_stack) as url:
        asyncio.run(main(url, args.agents, args.preset))
