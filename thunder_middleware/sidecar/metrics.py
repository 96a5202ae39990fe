"""The sidecar's Prometheus metrics, in a registry of its own.

Counters and histograms are updated on the request path. Gauges that describe state
(programs by phase and status, per-backend demand and capacity) are computed at scrape
time from the policy's views by a custom collector, so nothing has to keep them in sync.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from thunder_middleware.policy.types import Usage
from thunder_middleware.policy.views import BackendView, ProgramView
from thunder_middleware.sidecar.backends.base import BackendMetrics

PREFIX = "thunder_sidecar_"

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                    0.0075, 0.01, 0.025, 0.05, 0.1, 0.25)
_TOOL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                 900.0)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                 300.0)


class StateCollector(Collector):
    """Gauges read from the live state on each scrape."""

    def __init__(
        self,
        programs: Callable[[], list[ProgramView]],
        backends: Callable[[], list[BackendView]],
        engine_metrics: Callable[[], dict[str, tuple[bool, BackendMetrics]]],
        waiting: Callable[[], int],
        hit_rate: Callable[[], float | None],
    ) -> None:
        self._programs = programs
        self._backends = backends
        self._engine_metrics = engine_metrics
        self._waiting = waiting
        self._hit_rate = hit_rate

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        by_state = GaugeMetricFamily(PREFIX + "programs", "Programs by phase and status",
                                     labels=["phase", "status"])
        counts: dict[tuple[str, str], int] = {}
        for view in self._programs():
            key = (str(view.phase), str(view.status))
            counts[key] = counts.get(key, 0) + 1
        for (phase, status), count in sorted(counts.items()):
            by_state.add_metric([phase, status], count)
        yield by_state

        waiting = GaugeMetricFamily(PREFIX + "gate_waiting_requests",
                                    "Requests held at program gates")
        waiting.add_metric([], self._waiting())
        yield waiting

        rate = self._hit_rate()
        if rate is not None:
            hit = GaugeMetricFamily(PREFIX + "observed_prefix_hit_rate",
                                    "Cached / prompt tokens over all calls through the sidecar")
            hit.add_metric([], rate)
            yield hit

        families: dict[str, GaugeMetricFamily] = {
            "demand": GaugeMetricFamily(PREFIX + "backend_demand_tokens",
                                        "Committed KV demand (policy)", labels=["backend"]),
            "capacity": GaugeMetricFamily(PREFIX + "backend_capacity_tokens",
                                          "KV capacity C_b in tokens", labels=["backend"]),
            "high": GaugeMetricFamily(PREFIX + "backend_high_watermark_tokens",
                                      "Demand above which programs are paused",
                                      labels=["backend"]),
            "programs": GaugeMetricFamily(PREFIX + "backend_programs",
                                          "Programs bound to the backend", labels=["backend"]),
            "healthy": GaugeMetricFamily(PREFIX + "backend_healthy",
                                         "1 if the backend takes work", labels=["backend"]),
            "gating": GaugeMetricFamily(
                PREFIX + "backend_gating",
                "1 if the gate holds and pauses programs here, 0 in pass-through",
                labels=["backend"]),
            "gain": GaugeMetricFamily(
                PREFIX + "backend_gating_estimated_gain",
                "Measured LLM-side latency in pass-through / with the gate (> 1: gating pays)",
                labels=["backend"]),
        }
        for backend in self._backends():
            families["demand"].add_metric([backend.name], backend.demand)
            families["capacity"].add_metric([backend.name], backend.capacity_tokens)
            families["high"].add_metric([backend.name], backend.high_watermark)
            families["programs"].add_metric([backend.name], backend.programs)
            families["gating"].add_metric([backend.name], 1.0 if backend.gating == "gate" else 0.0)
            if backend.gating_gain is not None:
                families["gain"].add_metric([backend.name], backend.gating_gain)
        engine = {
            "kv": GaugeMetricFamily(PREFIX + "backend_kv_usage", "Engine KV usage (0-1)",
                                    labels=["backend"]),
            "hit": GaugeMetricFamily(PREFIX + "backend_prefix_hit_rate",
                                     "Engine prefix-cache hit rate since start",
                                     labels=["backend"]),
            "preempt": GaugeMetricFamily(PREFIX + "backend_preemptions",
                                         "Engine preemptions since start", labels=["backend"]),
        }
        for name, (healthy, metrics) in self._engine_metrics().items():
            families["healthy"].add_metric([name], 1.0 if healthy else 0.0)
            if metrics.kv_usage is not None:
                engine["kv"].add_metric([name], metrics.kv_usage)
            if metrics.prefix_hit_rate is not None:
                engine["hit"].add_metric([name], metrics.prefix_hit_rate)
            if metrics.preemptions is not None:
                engine["preempt"].add_metric([name], metrics.preemptions)
        yield from families.values()
        yield from engine.values()


class SidecarMetrics:
    """Every metric the sidecar exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        registry = self.registry
        self.requests = Counter(PREFIX + "requests", "Proxied requests by route and outcome",
                                ["route", "outcome"], registry=registry)
        self.pauses = Counter(PREFIX + "pauses", "Programs paused", registry=registry)
        self.restores = Counter(PREFIX + "restores", "Paused programs restored",
                                registry=registry)
        self.migrations = Counter(PREFIX + "migrations",
                                  "Programs restored onto a different backend",
                                  registry=registry)
        self.expirations = Counter(PREFIX + "expirations", "Programs expired when idle",
                                   registry=registry)
        self.releases = Counter(PREFIX + "releases", "Programs released", registry=registry)
        self.retries = Counter(PREFIX + "retries",
                               "Requests retried on another replica after a backend fault",
                               registry=registry)
        # counted per healthy -> down transition, however it was seen (a failed call, a
        # request-error streak, a failed scrape): which one sees a dead replica first is
        # a race, and operators alert on the replica going down, not on who noticed
        self.backend_faults = Counter(
            PREFIX + "backend_faults",
            "Times a backend was marked down (failed call, error streak or failed scrape)",
            ["backend"], registry=registry)
        self.watchdog_ended = Counter(
            PREFIX + "calls_ended_by_watchdog",
            "In-flight calls ended by the watchdog after no progress within the request "
            "timeout", registry=registry)
        self.store_degraded = Gauge(
            PREFIX + "store_degraded",
            "1 while the program store cannot be written (state kept in memory)",
            registry=registry)
        self.store_write_failures = Counter(
            PREFIX + "store_write_failures", "Program store writes that failed",
            registry=registry)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens (usage)",
                                     registry=registry)
        self.cached_tokens = Counter(PREFIX + "cached_tokens", "Cached prompt tokens (usage)",
                                     registry=registry)
        self.completion_tokens = Counter(PREFIX + "completion_tokens",
                                         "Completion tokens (usage)", registry=registry)
        self.queue_wait = Histogram(PREFIX + "queue_wait_seconds",
                                    "Time a request waited at its program's gate",
                                    buckets=_WAIT_BUCKETS, registry=registry)
        self.added_latency = Histogram(
            PREFIX + "added_latency_seconds",
            "Time spent in the sidecar per request, excluding upstream time and gate wait",
            buckets=_LATENCY_BUCKETS, registry=registry)
        # outcome: "recorded" (no environment: a scheduling signal only), "prepared" (an
        # environment was readied too), "rejected" (unknown or released program, bad body)
        self.tool_intents = Counter(PREFIX + "tool_intents", "Tool intents by outcome",
                                    ["outcome"], registry=registry)
        # labels bounded by ToolTimes (max_tool_names, then "other")
        self.tool_seconds = Histogram(
            PREFIX + "tool_seconds",
            "Tool time per announced tool name (exec time, else intent to next call)",
            ["tool"], buckets=_TOOL_BUCKETS, registry=registry)
        self.prompt_total = 0
        self.cached_total = 0

    def attach_state(self, collector: StateCollector) -> None:
        self.registry.register(collector)

    def record_usage(self, usage: Usage) -> None:
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.cached_tokens.inc(usage.cached_tokens)
        self.completion_tokens.inc(usage.completion_tokens)
        self.prompt_total += usage.prompt_tokens
        self.cached_total += usage.cached_tokens

    def observed_hit_rate(self) -> float | None:
        return self.cached_total / self.prompt_total if self.prompt_total else None

    def render(self) -> bytes:
        return generate_latest(self.registry)
