"""vLLM (and the engine twin, which speaks vLLM's metric names).

Capacity is ``num_gpu_blocks x block_size`` from the labels of ``vllm:cache_config_info``.
KV usage is ``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc`` before v0.10); the
prefix-cache counters are ``vllm:prefix_cache_queries_total`` / ``..._hits_total`` (V1).
"""

from __future__ import annotations

from thunder_middleware.sidecar.backends.base import (
    Backend,
    BackendMetrics,
    BackendUnavailable,
    Samples,
    parse_samples,
)

#: every sample name ``vllm_metrics`` reads (current and pre-v0.10 names)
VLLM_SAMPLES = (
    "vllm:cache_config_info",
    "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
    "vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total",
    "vllm:num_preemptions_total",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
)


def capacity_from_cache_config(samples: Samples) -> int | None:
    labels = samples.labels.get("vllm:cache_config_info")
    if not labels:
        return None
    try:
        return int(float(labels["num_gpu_blocks"])) * int(float(labels["block_size"]))
    except (KeyError, ValueError):
        return None


def vllm_metrics(samples: Samples, configured_capacity: int | None) -> BackendMetrics:
    return BackendMetrics(
        capacity_tokens=capacity_from_cache_config(samples) or configured_capacity,
        kv_usage=samples.get("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        prefix_cache_queries=samples.get(
            "vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"
        ),
        prefix_cache_hits=samples.get(
            "vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"
        ),
        preemptions=samples.get("vllm:num_preemptions_total"),
        running=samples.get("vllm:num_requests_running"),
        waiting=samples.get("vllm:num_requests_waiting"),
    )


class VLLMBackend(Backend):
    kind = "vllm"

    async def scrape(self, timeout: float = 2.0) -> BackendMetrics:
        response = await self._get("/metrics", timeout)
        if response.status_code != 200:
            raise BackendUnavailable(f"{self.url}/metrics: HTTP {response.status_code}")
        try:
            metrics = vllm_metrics(parse_samples(response.text, VLLM_SAMPLES),
                                   self.configured_capacity)
        except ValueError as exc:  # unparsable exposition text
            raise BackendUnavailable(f"{self.url}/metrics unreadable: {exc}") from exc
        if metrics.capacity_tokens is None:
            raise BackendUnavailable(
                f"{self.url}: no vllm:cache_config_info and no --backend-capacity"
            )
        self.metrics = metrics
        return metrics
