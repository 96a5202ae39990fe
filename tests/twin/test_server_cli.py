"""``thunder-middleware sim``: its options reach the engine, bad settings exit cleanly."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest
import typer
from typer.testing import CliRunner

from thunder_middleware.launch import start_twin
from thunder_middleware.twin.cli import sim

from .scrape import scrape


def test_options_reach_the_engine() -> None:
    server = start_twin(
        time_scale=5.0,
        num_gpu_blocks=512,
        block_size=32,
        extra_args=[
            "--served-model-name",
            "agent-model",
            "--max-num-seqs",
            "2",
            "--max-model-len",
            "4096",
        ],
    )
    try:
        card = httpx.get(server.url + "/v1/models").json()["data"][0]
        assert card["id"] == "agent-model" and card["max_model_len"] == 4096
        (info,) = scrape(server.url)["vllm:cache_config_info"]
        assert info.labels["num_gpu_blocks"] == "512" and info.labels["block_size"] == "32"
        wrong = httpx.post(
            server.url + "/v1/completions", json={"model": "qwen3-8b", "prompt": "x"}
        )
        assert wrong.status_code == 404

        def run(i: int) -> int:
            body = {
                "model": "agent-model",
                "prompt": f"p{i}",
                "max_tokens": 1000,
                "min_tokens": 1000,
                "ignore_eos": True,
            }
            return httpx.post(server.url + "/v1/completions", json=body, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(run, i) for i in range(4)]
            most_running, most_waiting = 0.0, 0.0
            while not all(f.done() for f in futures):
                samples = scrape(server.url)
                most_running = max(most_running, samples["vllm:num_requests_running"][0].value)
                most_waiting = max(most_waiting, samples["vllm:num_requests_waiting"][0].value)
            assert [f.result() for f in futures] == [200] * 4
        assert most_running <= 2  # --max-num-seqs 2
        assert most_waiting >= 1
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "gpt-5"], "unknown model profile"),
        (["--gpu", "tpu"], "unknown GPU profile"),
        (["--num-gpu-blocks", "64", "--max-model-len", "5000"], "larger than the maximum"),
        (["--time-scale", "0"], "time_scale must be > 0"),
    ],
)
def test_bad_settings_exit_with_a_message(args: list[str], message: str) -> None:
    app = typer.Typer()
    app.command("sim")(sim)
    app.command("other")(lambda: None)  # a second command keeps "sim" a subcommand
    result = CliRunner().invoke(app, ["sim", *args])
    assert result.exit_code == 2
    assert message in result.output
