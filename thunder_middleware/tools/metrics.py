"""Prometheus metrics of the tool-environment layer.

Environments by state are read from the manager at scrape time (a collector), so the gauge can
never drift from the truth; the rest are ordinary histograms and counters. A registry is passed
in so the sidecar exposes them on its own ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from thunder_middleware.tools.handles import EnvState

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class _StateCollector(Collector):
    def __init__(self, counts: Callable[[], dict[EnvState, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "thunder_tool_environments", "Tool environments by state", labels=["state"]
        )
        counts = self._counts()
        for state in EnvState:
            family.add_metric([state.value], counts.get(state, 0))
        yield family


class ToolMetrics:
    def __init__(
        self,
        counts_by_state: Callable[[], dict[EnvState, int]],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_StateCollector(counts_by_state))
        self.preparation_seconds = Histogram(
            "thunder_tool_env_preparation_seconds",
            "Time from the start of creation to passing the readiness check",
            buckets=_SECONDS, registry=self.registry,
        )
        self.readiness_wait_seconds = Histogram(
            "thunder_tool_env_readiness_wait_seconds",
            "Time an exec call waited for its environment to become ready",
            buckets=(0.0, *_SECONDS), registry=self.registry,
        )
        self.exec_seconds = Histogram(
            "thunder_tool_exec_seconds", "Duration of commands run in environments",
            buckets=_SECONDS, registry=self.registry,
        )
        self.reclaimed = Counter(
            "thunder_tool_reclaimed_resources", "Resources removed by lifecycle collection",
            labelnames=["kind", "reason"], registry=self.registry,
        )
        self.failures = Counter(
            "thunder_tool_env_preparation_failures", "Preparations that failed, by error code",
            labelnames=["code"], registry=self.registry,
        )
        self.disk_bytes = Gauge(
            "thunder_tool_disk_bytes", "Bytes on disk held by live tool environments",
            registry=self.registry,
        )
        self.ports_in_use = Gauge(
            "thunder_tool_ports_in_use", "Host ports lent to environments", registry=self.registry
        )
