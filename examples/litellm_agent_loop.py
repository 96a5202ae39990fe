"""A hand-written agent loop on the LiteLLM SDK, scheduled as one program by the sidecar.

The one line that makes it program-aware is ``litellm.callbacks = [ThunderLiteLLMCallback()]``
plus ``metadata={"program_id": ...}`` on each call. The tool (a shell command) runs in the
program's environment through the sidecar's exec route; the program is released at the end.

    THUNDER_SIDECAR_URL=http://127.0.0.1:9000 python examples/litellm_agent_loop.py
    python examples/litellm_agent_loop.py --mode sync   # the sync path, through the wrapper

By default it runs the loop twice, once per path (async callback, sync wrapper).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from thunder_middleware.agents.coding import served_model
from thunder_middleware.integrations import litellm as thunder_litellm
from thunder_middleware.integrations.client import (
    AsyncThunderClient,
    ThunderClient,
    default_sidecar_url,
    format_exec_result,
)

SHELL_TOOL = {"type": "function", "function": {
    "name": "run_shell", "description": "Run a shell command in the sandbox",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                   "required": ["command"]}}}


def request(sidecar: str, model: str, program_id: str,
            messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": f"openai/{model}", "api_base": sidecar + "/v1", "api_key": "EMPTY",
            "messages": messages, "tools": [SHELL_TOOL], "max_tokens": 1024,
            "metadata": {"program_id": program_id}}


def record_turn(messages: list[dict[str, Any]], message: Any) -> list[tuple[str, str]]:
    """Append the assistant turn; return (call id, command) of each tool call."""
    calls = message.tool_calls or []
    messages.append({"role": "assistant", "content": message.content, "tool_calls": [
        {"id": c.id, "type": "function",
         "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in calls]})
    return [(c.id, str(json.loads(c.function.arguments or "{}").get("command", "true")))
            for c in calls]


async def run_async(sidecar: str, model: str, program_id: str) -> int:
    litellm.callbacks = [thunder_litellm.ThunderLiteLLMCallback(sidecar)]  # the one line
    async with AsyncThunderClient(sidecar) as client, client.releasing(program_id):
        await client.register(program_id, preset="local-shell")
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Check the sandbox."}]
        steps = 0
        while True:
            response = await litellm.acompletion(**request(sidecar, model, program_id, messages))
            steps += 1
            calls = record_turn(messages, response.choices[0].message)
            if not calls:
                return steps
            for call_id, command in calls:
                result = await client.exec(program_id, ["sh", "-c", command], timeout_s=30)
                messages.append({"role": "tool", "tool_call_id": call_id,
                                 "content": format_exec_result(result)})


def run_sync(sidecar: str, model: str, program_id: str) -> int:
    with ThunderClient(sidecar) as client, client.releasing(program_id):
        client.register(program_id, preset="local-shell")
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Check the sandbox."}]
        steps = 0
        while True:
            response = thunder_litellm.completion(client=client,
                                                  **request(sidecar, model, program_id, messages))
            steps += 1
            calls = record_turn(messages, response.choices[0].message)
            if not calls:
                return steps
            for call_id, command in calls:
                result = client.exec(program_id, ["sh", "-c", command], timeout_s=30)
                messages.append({"role": "tool", "tool_call_id": call_id,
                                 "content": format_exec_result(result)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["async", "sync", "both"], default="both")
    args = parser.parse_args()
    sidecar = default_sidecar_url()
    model = served_model(sidecar)
    for mode in ("async", "sync") if args.mode == "both" else (args.mode,):
        program_id = f"litellm-{mode}-{uuid.uuid4().hex[:8]}"
        steps = (run_sync(sidecar, model, program_id) if mode == "sync"
                 else asyncio.run(run_async(sidecar, model, program_id)))
        with ThunderClient(sidecar) as client:
            seen = client.program(program_id) or {}
        print(f"{program_id}: {steps} model calls; sidecar saw {seen['summary']['steps']} "
              f"steps, status {seen['status']} ({seen['terminated_reason']})")


if __name__ == "__main__":
    main()
