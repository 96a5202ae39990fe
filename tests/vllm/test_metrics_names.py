"""Real vLLM's /metrics carries what the sidecar's vLLM adapter reads, and the twin's carries
the same names with the same labels: the sidecar treats both alike, so both must look alike."""

from __future__ import annotations

import pytest

from benchmarks.vllm_twin_replay import metric_samples, scrape_metrics
from benchmarks.vllm_vs_twin import EngineLimits
from thunder_middleware.launch import RunningServer
from thunder_middleware.sidecar.backends.base import parse_samples
from thunder_middleware.sidecar.backends.vllm import VLLM_SAMPLES, vllm_metrics

pytestmark = pytest.mark.vllm

# what thunder_middleware/sidecar/backends/vllm.py reads
ADAPTER_SAMPLES = [
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:num_preemptions_total",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
]
CACHE_CONFIG = "vllm:cache_config_info"
CACHE_CONFIG_LABELS = {"engine", "block_size", "num_gpu_blocks"}  # no model_name here


def test_real_vllm_exports_what_the_adapter_reads(
    vllm_url: str, vllm_limits: EngineLimits
) -> None:
    samples = metric_samples(scrape_metrics(vllm_url))
    for name in ADAPTER_SAMPLES:
        assert name in samples, f"real vLLM has no {name}"
        for labels, _ in samples[name]:
            assert {"engine", "model_name"} <= labels.keys(), (name, labels)
    (labels, _), *_ = samples[CACHE_CONFIG]
    assert labels.keys() >= CACHE_CONFIG_LABELS
    # the sidecar's own parser, on the real thing, reading only the lines it needs (as the
    # adapter does) and everything: the same metrics
    text = scrape_metrics(vllm_url)
    metrics = vllm_metrics(parse_samples(text, VLLM_SAMPLES), configured_capacity=None)
    assert metrics == vllm_metrics(parse_samples(text), configured_capacity=None)
    assert metrics.capacity_tokens == vllm_limits.num_blocks * vllm_limits.block_size
    for field in ("kv_usage", "prefix_cache_queries", "prefix_cache_hits", "preemptions",
                  "running", "waiting"):
        assert getattr(metrics, field) is not None, field


def test_twin_exports_the_same_names_and_labels(
    vllm_url: str, matched_twin: RunningServer
) -> None:
    real = metric_samples(scrape_metrics(vllm_url))
    twin = metric_samples(scrape_metrics(matched_twin.url))
    for name in ADAPTER_SAMPLES:
        assert name in twin, f"the twin has no {name}"
        real_labels = {frozenset(labels) for labels, _ in real[name]}
        twin_labels = {frozenset(labels) for labels, _ in twin[name]}
        assert twin_labels == real_labels, f"{name}: twin {twin_labels} vs vLLM {real_labels}"
    (real_info, _), *_ = real[CACHE_CONFIG]
    (twin_info, _), *_ = twin[CACHE_CONFIG]
    assert twin_info.keys() >= CACHE_CONFIG_LABELS
    for label in ("block_size", "num_gpu_blocks"):
        assert twin_info[label] == real_info[label], label
