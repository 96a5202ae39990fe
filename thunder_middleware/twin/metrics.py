"""The twin's ``/metrics``: vLLM's Prometheus names, labels and meanings.

The sidecar and the benchmarks read a backend's KV usage and prefix-cache counters from
``/metrics``; against real vLLM nothing may change, so the names are vLLM v1's
(``vllm:kv_cache_usage_perc``, ``vllm:prefix_cache_hits_total``, ...) with the labels
``engine="0"`` and ``model_name``. Counters and gauges are read from the engine's stats
snapshot at scrape time (one source of truth, no double bookkeeping); the latency
histograms observe *modeled* seconds (the engine clock, see :mod:`.driver`), with vLLM's
bucket bounds. Each server has its own :class:`CollectorRegistry`, so several twins in one
process (tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from thunder_middleware.twin.driver import RequestTiming
from thunder_middleware.twin.stats import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: vLLM's labels on every engine series: the engine index (always "0": one engine) and the model.
LABEL_NAMES = ("engine", "model_name")

# fmt: off
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)
# fmt: on


@dataclass(frozen=True)
class CacheConfigInfo:
    """What ``vllm:cache_config_info`` carries as labels."""

    block_size: int
    num_gpu_blocks: int
    gpu_memory_utilization: float
    enable_prefix_caching: bool = True
    cache_dtype: str = "auto"

    def labels(self) -> dict[str, str]:
        return {
            "block_size": str(self.block_size),
            "num_gpu_blocks": str(self.num_gpu_blocks),
            "gpu_memory_utilization": str(self.gpu_memory_utilization),
            "enable_prefix_caching": str(self.enable_prefix_caching),
            "cache_dtype": self.cache_dtype,
        }


class EngineStatsCollector(Collector):
    """Counters and gauges straight from the latest engine stats snapshot."""

    def __init__(
        self, read_stats: Callable[[], EngineStats], model_name: str, cache: CacheConfigInfo
    ) -> None:
        self._read_stats = read_stats
        self._model_name = model_name
        self._cache = cache

    def _labels(self) -> tuple[list[str], list[str]]:
        return list(LABEL_NAMES), ["0", self._model_name]

    def _families(
        self,
        family: type[CounterMetricFamily] | type[GaugeMetricFamily],
        table: dict[str, tuple[str, float]],
    ) -> Iterator[Metric]:
        """One single-sample family per ``name: (documentation, value)`` of ``table``, all with
        this engine's labels."""
        names, values = self._labels()
        for name, (documentation, value) in table.items():
            metric = family(name, documentation, labels=names)
            metric.add_metric(values, float(value))
            yield metric

    def collect(self) -> Iterator[Metric]:
        stats = self._read_stats()
        # vLLM >= 0.11 counts re-admissions after preemption apart ("preempted" stats).
        counters: dict[str, tuple[str, float]] = {
            "vllm:prefix_cache_queries": (
                "Prefix cache queries, in terms of number of queried tokens.",
                stats.prefix_cache_queries - stats.prefix_cache_queries_preempted,
            ),
            "vllm:prefix_cache_hits": (
                "Prefix cache hits, in terms of number of cached tokens.",
                stats.prefix_cache_hits - stats.prefix_cache_hits_preempted,
            ),
            "vllm:num_preemptions": (
                "Cumulative number of preemption from the engine.",
                stats.num_preemptions,
            ),
            "vllm:prompt_tokens": ("Number of prefill tokens processed.", stats.prompt_tokens),
            "vllm:generation_tokens": (
                "Number of generation tokens processed.",
                stats.generation_tokens,
            ),
        }
        yield from self._families(CounterMetricFamily, counters)
        gauges: dict[str, tuple[str, float]] = {
            "vllm:num_requests_running": (
                "Number of requests in model execution batches.",
                stats.num_running,
            ),
            "vllm:num_requests_waiting": (
                "Number of requests waiting to be processed.",
                stats.num_waiting,
            ),
            "vllm:kv_cache_usage_perc": (
                "KV-cache usage. 1 means 100 percent usage.",
                stats.kv_cache_usage,
            ),
        }
        yield from self._families(GaugeMetricFamily, gauges)
        info_labels = {"engine": "0", **self._cache.labels()}
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=list(info_labels),
        )
        info.add_metric(list(info_labels.values()), 1.0)
        yield info


class TwinMetrics:
    """The registry of one twin server: engine stats plus modeled-latency histograms."""

    def __init__(
        self, read_stats: Callable[[], EngineStats], model_name: str, cache: CacheConfigInfo
    ) -> None:
        disable_created_metrics()  # as vLLM does: no *_created series
        self.registry = CollectorRegistry()
        self.registry.register(EngineStatsCollector(read_stats, model_name, cache))
        self._ttft = self._histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds (modeled engine time).",
            TTFT_BUCKETS, model_name,
        )
        self._e2e = self._histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds (modeled engine time).",
            E2E_BUCKETS, model_name,
        )

    def _histogram(
        self, name: str, documentation: str, buckets: tuple[float, ...], model_name: str
    ) -> Histogram:
        """A histogram of this registry with vLLM's labels, already bound to this engine."""
        return Histogram(
            name, documentation, list(LABEL_NAMES), registry=self.registry, buckets=buckets
        ).labels("0", model_name)

    def observe(self, timing: RequestTiming) -> None:
        self._ttft.observe(timing.ttft_s)
        self._e2e.observe(timing.e2e_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
