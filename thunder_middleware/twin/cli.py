"""``thunder-middleware sim``: serve an engine twin on a port.

The option names are a contract: tests (``launch.start_twin``), benchmarks and the demo
drive the twin by them, and they mirror ``vllm serve``'s flags where one exists.
"""

from __future__ import annotations

import logging

import typer


def sim(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    gpu: str = typer.Option("h100", help="GPU profile: h100 or a100."),
    model: str = typer.Option(
        "qwen3-8b", help="Model profile: qwen3-8b, llama-3.1-8b, qwen3-235b-a22b."
    ),
    time_scale: float = typer.Option(10.0, help="Run this many times faster than modeled time."),
    num_gpu_blocks: int | None = typer.Option(None, help="KV blocks (default: from GPU memory)."),
    block_size: int = typer.Option(16, help="Tokens per KV block."),
    max_num_seqs: int = typer.Option(1024, help="Most sequences in one batch."),
    max_num_batched_tokens: int = typer.Option(8192, help="Token budget of one step."),
    max_model_len: int | None = typer.Option(
        None, help="Model length (default: the model's, capped by KV capacity)."
    ),
    gpu_memory_utilization: float = typer.Option(
        0.9, help="Fraction of GPU memory for weights + KV."
    ),
    served_model_name: str | None = typer.Option(
        None, help="Model name clients use (default: --model)."
    ),
    seed: int = typer.Option(0, help="Seed of the reply content (lengths, text, tool calls)."),
    tool_turns: str = typer.Option(
        "2-6", help="Range of tool-call turns per conversation, e.g. 20-40 for long agents."
    ),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
) -> None:
    """Run the engine twin: an OpenAI server that behaves like a vLLM replica."""
    import uvicorn

    from thunder_middleware.twin.server import TwinConfig, create_twin_app

    try:
        low, _, high = tool_turns.partition("-")
        turns = (int(low), int(high or low))
    except ValueError:
        typer.echo(f"error: --tool-turns must look like 2-6, got {tool_turns!r}", err=True)
        raise typer.Exit(2) from None
    config = TwinConfig(
        gpu=gpu,
        model=model,
        served_model_name=served_model_name,
        time_scale=time_scale,
        num_gpu_blocks=num_gpu_blocks,
        block_size=block_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        seed=seed,
        tool_turns=turns,
    )
    try:
        app = create_twin_app(config)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    resolved = app.state.twin
    typer.echo(
        f"engine twin on http://{host}:{port}: {model} on {gpu}, "
        f"{resolved.num_blocks} blocks x {block_size} tokens, "
        f"max_model_len {resolved.engine_config.max_model_len}, time scale {time_scale:g}"
    )
    # keep-alive beyond uvicorn's 5 s: pooled client connections (the sidecar's) then
    # rarely race a server-side close between requests
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )
