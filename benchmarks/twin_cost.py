"""The engine twin's own cost: simulated engine steps per CPU second.

The virtual-time simulator pushes tens of thousands of steps through ``EngineCore`` per
policy comparison (96 programs x 50 steps x hundreds of output tokens), so the core must
cost microseconds per request per step. This measures it at 1, 16, 96 and 256 running
requests, decode-only and with prefill chunks mixed in (multi-turn conversations whose next
turn arrives as soon as the previous one finishes), on the H100 + Qwen3-8B profile.

    .venv/bin/python -m benchmarks.twin_cost [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from thunder_middleware.twin import (
    EngineConfig,
    EngineCore,
    EngineRequest,
    num_blocks_for,
    roofline_for,
)

RESULTS = Path(__file__).parent / "results"
CONCURRENCY = (1, 16, 96, 256)


@dataclass
class CostRow:
    workload: str
    running: int
    steps: int
    cpu_s: float
    tokens: int
    modeled_s: float
    mean_batch: float

    @property
    def steps_per_cpu_s(self) -> float:
        return self.steps / self.cpu_s

    @property
    def us_per_request_step(self) -> float:
        return self.cpu_s / (self.steps * self.mean_batch) * 1e6


def new_engine() -> EngineCore:
    return EngineCore(
        EngineConfig(
            num_blocks=num_blocks_for("h100", "qwen3-8b"),
            step_model=roofline_for("h100", "qwen3-8b"),
        )
    )


def tokens_for(conversation: int, start: int, count: int) -> list[int]:
    base = 1 + conversation * 7919
    return [(base + i * 31) % 31_999 + 1 for i in range(start, start + count)]


def measure(workload: str, running: int, seconds: float) -> CostRow:
    """Run ``running`` concurrent conversations; time steps until ``seconds`` of CPU."""
    engine = new_engine()
    decode_only = workload == "decode"
    prompt_len = 1024 if running <= 96 else 512
    output_len = 100_000 if decode_only else 200
    history: dict[int, list[int]] = {}
    turn: dict[str, int] = {}

    def submit(conversation: int) -> None:
        context = history.get(conversation, [])
        if len(context) > 6000:  # start a new conversation rather than grow forever
            context = []
        context = context + tokens_for(conversation, len(context), prompt_len if not context
                                       else 150)
        history[conversation] = context
        request_id = f"c{conversation}-{len(context)}"
        turn[request_id] = conversation
        engine.add_request(EngineRequest(request_id, context, min(output_len, 120_000
                                                                   - len(context))))

    for conversation in range(running):
        submit(conversation)
    produced: dict[str, list[int]] = {}

    def advance() -> tuple[int, float, int]:
        result = engine.step()
        for output in result.outputs:
            produced.setdefault(output.request_id, []).extend(output.new_token_ids)
            if output.finished:
                conversation = turn.pop(output.request_id)
                history[conversation] = history[conversation] + produced.pop(output.request_id)
                submit(conversation)
        return result.num_scheduled_tokens, result.duration_s, result.num_scheduled_requests

    # Warm up: every conversation prefilled once, so decode-only measures decode.
    while True:
        warmup = engine.step()
        if not engine.stats.num_waiting and warmup.num_scheduled_tokens == running:
            break
    steps = tokens = batch_total = 0
    modeled = 0.0
    start = time.process_time()
    while True:
        scheduled, duration, batch = advance()
        steps += 1
        tokens += scheduled
        modeled += duration
        batch_total += batch
        if steps % 64 == 0 and time.process_time() - start >= seconds:
            break
    cpu = time.process_time() - start
    return CostRow(workload, running, steps, cpu, tokens, modeled, batch_total / steps)


def render(rows: list[CostRow]) -> tuple[Table, str]:
    table = Table(title="engine twin cost (H100 + Qwen3-8B profile, CPU time)")
    headers = ["workload", "running", "steps", "steps / CPU s", "us / request-step",
               "tokens / CPU s", "modeled s / CPU s"]
    for header in headers:
        table.add_column(header, justify="right")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [
            row.workload,
            str(row.running),
            str(row.steps),
            f"{row.steps_per_cpu_s:,.0f}",
            f"{row.us_per_request_step:.2f}",
            f"{row.tokens / row.cpu_s:,.0f}",
            f"{row.modeled_s / row.cpu_s:,.1f}",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    return table, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per cell")
    args = parser.parse_args()
    rows = [
        measure(workload, running, args.seconds)
        for workload in ("decode", "mixed")
        for running in CONCURRENCY
    ]
    table, markdown = render(rows)
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "twin_cost.md"
    out.write_text(
        "# Engine twin cost\n\n"
        "Simulated engine steps per CPU second (`time.process_time`), "
        "`python -m benchmarks.twin_cost`.\n"
        "decode: every request decoding; mixed: multi-turn conversations (200-token "
        "outputs, next turn of +150 tokens submitted at once), so prefill chunks and "
        "prefix-cache lookups mix with decode. First prompts are 1,024 tokens (512 at 256 "
        "running); CPU time includes the driver's own bookkeeping.\n\n" + markdown + "\n"
    )
    Console().print(f"wrote {out}")


if __name__ == "__main__":
    main()
