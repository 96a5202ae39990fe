"""The sidecar in front of real vLLM: it recognises the engine from /metrics, takes the KV
capacity from vLLM's cache_config_info, passes requests through and books each program's
steps with vLLM's own cached-token counts. Nothing but the backend URL changes from the twin."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import httpx
import pytest

from benchmarks.vllm_vs_twin import EngineLimits
from thunder_middleware.launch import RunningServer, start_sidecar

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def sidecar_over_vllm(vllm_url: str) -> Iterator[RunningServer]:
    server = start_sidecar([vllm_url], extra_args=["--env-provider", "none",
                                                   "--metrics-interval", "0.2"])
    try:
        yield server
    finally:
        server.stop()


def test_sidecar_sees_vllm_capacity(sidecar_over_vllm: RunningServer,
                                    vllm_limits: EngineLimits) -> None:
    health = httpx.get(sidecar_over_vllm.url + "/health", timeout=10.0).json()
    (backend,) = health["backends"]
    assert backend["kind"] == "vllm"
    assert backend["healthy"] is True
    assert backend["capacity_tokens"] == vllm_limits.num_blocks * vllm_limits.block_size


def test_program_turns_through_sidecar_hit_vllm_cache(
    sidecar_over_vllm: RunningServer, vllm_limits: EngineLimits, vllm_url: str
) -> None:
    url = sidecar_over_vllm.url
    program = f"real-{uuid.uuid4().hex[:8]}"
    rng = random.Random(program)
    prompt = [rng.randrange(16, 4000) for _ in range(1000)]
    body = {"model": "tiny", "max_tokens": 8, "min_tokens": 8, "ignore_eos": True,
            "program_id": program}
    with httpx.Client(timeout=120.0) as client:
        first = client.post(url + "/v1/completions", json={**body, "prompt": prompt})
        assert first.status_code == 200, first.text
        # the next turn: the prompt, a (pseudo) reply and an observation
        second_prompt = prompt + list(range(20, 28)) + list(range(100, 164))
        second = client.post(url + "/v1/completions", json={**body, "prompt": second_prompt})
        assert second.status_code == 200, second.text
        block = vllm_limits.block_size
        cached = second.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached == len(prompt) // block * block  # every full block of turn 1's prompt

        chat = client.post(url + "/v1/chat/completions", json={
            "model": "tiny", "max_tokens": 4, "program_id": program,
            "messages": [{"role": "user", "content": "def main():"}]})
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["role"] == "assistant"

        state = client.get(url + f"/programs/{program}").json()
        assert state["backend"] == vllm_url
        steps = state["timeline"]
        assert [s["cached_tokens"] for s in steps[:2]] == [0, cached]
        assert [s["prompt_tokens"] for s in steps[:2]] == [len(prompt), len(second_prompt)]
        assert state["summary"]["steps"] == 3

        released = client.post(url + "/programs/release", json={"program_id": program})
        assert released.status_code == 200, released.text
