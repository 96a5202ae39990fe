"""The roofline's figures, with their arithmetic, for the H100 + Qwen3-8B profile: one decode
step at batch 1 and at batch 64 (every request at a 4,096-token context), and one 8,192-token
prefill (empty cache, one chunk), ideal and calibrated. Also a plot of decode step time and
throughput against batch size for every GPU x model profile.

    .venv/bin/python -m benchmarks.roofline_figures
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from thunder_middleware.twin import GPUS, MODELS, BatchShape, StepCost, get_gpu, roofline_for
from thunder_middleware.twin.roofline import (
    DECODE_KV_READ_FACTOR,
    LAYER_OVERHEAD_S,
    REQUEST_OVERHEAD_S,
    STEP_OVERHEAD_S,
    WEIGHT_READ_FACTOR,
)

RESULTS = Path(__file__).parent / "results"
CONTEXT = 4096


def decode(batch: int, context: int = CONTEXT) -> BatchShape:
    shape = BatchShape()
    for _ in range(batch):
        shape.add(context - 1, 1, sampled=True)
    return shape


def prefill(tokens: int) -> BatchShape:
    shape = BatchShape()
    shape.add(0, tokens, sampled=True)
    return shape


CASES = {
    f"decode, batch 1, {CONTEXT} ctx": decode(1),
    f"decode, batch 64, {CONTEXT} ctx each": decode(64),
    "prefill, 8192 tokens": prefill(8192),
}


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def explain_rows(cost: StepCost) -> list[tuple[str, str]]:
    gpu = get_gpu("h100")
    tflops = f"{gpu.tensor_flops / 1e12:.0f} TFLOP/s"
    bandwidth = f"{gpu.hbm_bandwidth / 1e12:.1f} TB/s"
    return [
        ("FLOPs linear (2 x params x tokens + LM head)", f"{cost.flops_linear / 1e12:.3f} T"),
        ("FLOPs attention (4 x heads x dim x layers x pairs)",
         f"{cost.flops_attention / 1e12:.3f} T"),
        (f"compute time = FLOPs / {tflops}", ms(cost.compute_s)),
        ("bytes weights", f"{cost.bytes_weights / 1e9:.2f} GB"),
        ("bytes KV read (decode)", f"{cost.bytes_kv_read_decode / 1e9:.2f} GB"),
        ("bytes KV read (prefill)", f"{cost.bytes_kv_read_prefill / 1e9:.2f} GB"),
        ("bytes KV written", f"{cost.bytes_kv_write / 1e9:.3f} GB"),
        (f"memory time = bytes / {bandwidth}", ms(cost.memory_s)),
        ("bound", cost.bound),
        ("overheads", ms(cost.overhead_s)),
        ("step time", ms(cost.total_s)),
    ]


def figures_table() -> tuple[list[Table], list[str]]:
    tables: list[Table] = []
    markdown: list[str] = []
    for calibrated in (False, True):
        model = roofline_for("h100", "qwen3-8b", calibrated=calibrated)
        label = "calibrated" if calibrated else "ideal roofline"
        table = Table(title=f"H100 + Qwen3-8B, {label}")
        table.add_column("term")
        for case in CASES:
            table.add_column(case, justify="right")
        costs = [model.explain(shape) for shape in CASES.values()]
        rows = [explain_rows(cost) for cost in costs]
        markdown.append(f"\n### {label}\n")
        markdown.append("| term | " + " | ".join(CASES) + " |")
        markdown.append("|---|" + "---:|" * len(CASES))
        for index, (term, _) in enumerate(rows[0]):
            cells = [row[index][1] for row in rows]
            table.add_row(term, *cells)
            markdown.append(f"| {term} | " + " | ".join(cells) + " |")
        tables.append(table)
    return tables, markdown


def cross_check() -> list[str]:
    ideal = roofline_for("h100", "qwen3-8b", calibrated=False)
    gpu = get_gpu("h100")
    weights = ideal.weight_bytes(1)
    model = ideal.model
    per_token = model.kv_bytes_per_token
    return [
        f"- weights streamed per step: ({model.total_params / 1e9:.2f}B params - "
        f"{model.embedding_params / 1e9:.3f}B input embedding) x 2 B = {weights / 1e9:.2f} GB",
        f"- batch-1 decode before KV reads: {weights / 1e9:.2f} GB / 3.35 TB/s peak = "
        f"{ms(weights / gpu.hbm_bandwidth_peak)}; / 3.0 TB/s achieved = "
        f"{ms(weights / gpu.hbm_bandwidth)} (DESIGN.md: about 4.5-5 ms)",
        f"- KV per token: 2 x {model.num_layers} layers x {model.num_kv_heads} KV heads x "
        f"{model.head_dim} x 2 B = {per_token:,} B; a {CONTEXT}-token context = "
        f"{per_token * CONTEXT / 1e6:.0f} MB, x64 requests = {per_token * CONTEXT * 64 / 1e9:.1f}"
        " GB",
        f"- calibration: +{STEP_OVERHEAD_S * 1e6:.0f} us/step, "
        f"+{LAYER_OVERHEAD_S * 1e6:.0f} us/layer x {model.num_layers}, "
        f"+{REQUEST_OVERHEAD_S * 1e6:.0f} us/request, decode KV x{DECODE_KV_READ_FACTOR}, "
        f"weights x{WEIGHT_READ_FACTOR}",
    ]


def plot(path: Path) -> None:
    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for gpu in sorted(GPUS):
        for name in sorted(MODELS):
            model = roofline_for(gpu, name)
            times = [model.step_time(decode(b)) for b in batches]
            style = "-" if gpu == "h100" else "--"
            left.plot(batches, [t * 1e3 for t in times], style, marker="o", label=f"{gpu} {name}")
            right.plot(batches, [b / t for b, t in zip(batches, times, strict=True)], style,
                       marker="o", label=f"{gpu} {name}")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel(f"decode batch ({CONTEXT}-token contexts)")
        axis.grid(alpha=0.3)
    left.set_ylabel("modeled step time (ms)")
    right.set_ylabel("output tokens / s")
    left.legend(fontsize=7)
    fig.suptitle("engine twin roofline (calibrated)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    console = Console()
    tables, markdown = figures_table()
    for table in tables:
        console.print(table)
    checks = cross_check()
    for line in checks:
        console.print(line)
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "roofline_decode.png"
    plot(png)
    out = RESULTS / "roofline_figures.md"
    out.write_text(
        "# Roofline figures (H100 + Qwen3-8B)\n\n"
        "`python -m benchmarks.roofline_figures`. Step = max(FLOPs / 790 TFLOP/s, bytes / "
        "3.0 TB/s) + overheads; see `thunder_middleware/twin/roofline.py`.\n"
        + "\n".join(markdown)
        + "\n\n### cross-check\n\n"
        + "\n".join(checks)
        + f"\n\n![decode step time and throughput by batch]({png.name})\n"
    )
    console.print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
