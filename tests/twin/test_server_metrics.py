"""``/metrics`` parsed with prometheus_client's parser: vLLM's names, labels and meanings."""

from __future__ import annotations

import concurrent.futures
import time
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from thunder_middleware.launch import RunningServer, start_twin

from .scrape import scrape, value

LABELS = {"engine": "0", "model_name": "qwen3-8b"}
COUNTERS = [
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:num_preemptions",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
]
GAUGES = ["vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting"]
HISTOGRAMS = ["vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"]


def test_names_types_and_labels(twin_server: RunningServer) -> None:
    text = httpx.get(twin_server.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in COUNTERS:
        assert families[name].type == "counter"
        (sample,) = families[name].samples
        assert sample.name == name + "_total" and sample.labels == LABELS
    for name in GAUGES:
        assert families[name].type == "gauge"
        assert families[name].samples[0].labels == LABELS
    for name in HISTOGRAMS:
        assert families[name].type == "histogram"
        buckets = [s for s in families[name].samples if s.name.endswith("_bucket")]
        assert buckets and all(s.labels["engine"] == "0" for s in buckets)
    (info,) = families["vllm:cache_config_info"].samples
    assert info.value == 1.0
    stats = httpx.get(twin_server.url + "/twin/stats").json()
    assert info.labels["num_gpu_blocks"] == str(stats["num_blocks"])
    assert info.labels["block_size"] == str(stats["block_size"]) == "16"


def test_counters_follow_requests(twin_server: RunningServer) -> None:
    url = twin_server.url
    before = {name: value(url, name + "_total") for name in COUNTERS}
    ttft_before = value(url, "vllm:time_to_first_token_seconds_count")
    system = {"role": "system", "content": f"{uuid.uuid4()} " + "rules " * 200}
    body = {
        "messages": [system, {"role": "user", "content": "a"}],
        "max_tokens": 30,
        "min_tokens": 30,
        "ignore_eos": True,
    }
    first = httpx.post(url + "/v1/chat/completions", json=body, timeout=30).json()["usage"]
    second = httpx.post(url + "/v1/chat/completions", json=body, timeout=30).json()["usage"]
    after = {name: value(url, name + "_total") for name in COUNTERS}
    prompt = first["prompt_tokens"]
    assert after["vllm:prompt_tokens"] - before["vllm:prompt_tokens"] == 2 * prompt
    assert after["vllm:generation_tokens"] - before["vllm:generation_tokens"] == 60
    assert after["vllm:prefix_cache_queries"] - before["vllm:prefix_cache_queries"] == 2 * prompt
    hits = after["vllm:prefix_cache_hits"] - before["vllm:prefix_cache_hits"]
    assert (
        hits
        == first["prompt_tokens_details"]["cached_tokens"]
        + (second["prompt_tokens_details"]["cached_tokens"])
    )
    assert second["prompt_tokens_details"]["cached_tokens"] > 0
    assert value(url, "vllm:time_to_first_token_seconds_count") == ttft_before + 2
    # idle again: nothing running, no block referenced
    assert value(url, "vllm:num_requests_running") == 0
    assert value(url, "vllm:kv_cache_usage_perc") == 0


def _run_pressure_round(url: str, requests: int) -> float:
    """Run ``requests`` long completions at once and return the most waiting requests seen.

    ``/metrics`` is sampled from the test thread for as long as any request is in flight; every
    sample must keep the KV usage within its bound and every request must get all its tokens.
    """
    most_waiting = 0.0

    def complete(i: int) -> int:
        body = {"prompt": f"job {i} " * 60, "max_tokens": 400, "min_tokens": 400,
                "ignore_eos": True}
        response = httpx.post(url + "/v1/completions", json=body, timeout=120)
        return int(response.json()["usage"]["completion_tokens"])

    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        futures = [pool.submit(complete, i) for i in range(requests)]
        while not all(f.done() for f in futures):
            samples = scrape(url)
            most_waiting = max(most_waiting, samples["vllm:num_requests_waiting"][0].value)
            assert samples["vllm:kv_cache_usage_perc"][0].value <= 1.0
        assert [f.result() for f in futures] == [400] * requests
    return most_waiting


def test_preemptions_and_waiting_under_kv_pressure() -> None:
    """64 blocks x 16 tokens: eight 520-token requests at once cannot all fit, so some wait.

    Seeing the waiting gauge above zero needs the requests to overlap in the engine, which a
    loaded machine can prevent by submitting them slowly. So the load is held for a while
    (time scale 2: each request lasts about 1.3 s, eight need several seconds) and, should a
    round still pass without overlap, another round runs, until a generous deadline. Every round
    checks the same things; the counters are read once all requests are done.
    """
    server = start_twin(time_scale=2.0, num_gpu_blocks=64, block_size=16)
    url = server.url
    try:
        deadline = time.monotonic() + 90.0
        most_waiting = _run_pressure_round(url, requests=8)
        while most_waiting == 0 and time.monotonic() < deadline:
            most_waiting = _run_pressure_round(url, requests=8)
        assert most_waiting > 0
        assert value(url, "vllm:num_preemptions_total") > 0
        assert value(url, "vllm:num_requests_running") == 0
        assert value(url, "vllm:num_requests_waiting") == 0
        assert value(url, "vllm:kv_cache_usage_perc") == 0
    finally:
        server.stop()
