"""What the sidecar knows about one engine replica, and how an adapter learns it.

An adapter turns an engine's own endpoints into :class:`BackendMetrics`: the KV capacity in
tokens (the policy's C_b), the engine's KV usage (the shared-prefix correction) and the
counters shown on the sidecar's /metrics. Health is not decided here: the pool decides it
from whether scrapes and probes succeed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families


class BackendUnavailable(Exception):
    """The backend did not answer, or answered in a way that means it cannot serve."""


@dataclass(slots=True)
class BackendMetrics:
    """One scrape; None where the engine does not expose the value."""

    capacity_tokens: int | None = None
    kv_usage: float | None = None  # 0..1 of KV referenced by live requests
    prefix_cache_queries: float | None = None  # tokens looked up (counter)
    prefix_cache_hits: float | None = None  # tokens found (counter)
    preemptions: float | None = None  # counter
    running: float | None = None
    waiting: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def prefix_hit_rate(self) -> float | None:
        if not self.prefix_cache_queries or self.prefix_cache_hits is None:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries


@dataclass(slots=True)
class Samples:
    """Prometheus samples by name: summed values, and the labels of the first sample."""

    values: dict[str, float]
    labels: dict[str, dict[str, str]]

    def get(self, *names: str) -> float | None:
        for name in names:
            if name in self.values:
                return self.values[name]
        return None


def parse_samples(text: str, names: Iterable[str] | None = None) -> Samples:
    """Sum samples across label sets (engines label by model/engine index).

    ``names``: the only samples the caller reads (prefixes of sample lines). The parser is
    pure Python and an engine's exposition is mostly histogram buckets (1.6 ms for the
    twin's 80 lines against 0.2 ms for the vLLM adapter's lines, sidecar_overhead.md; a real
    vLLM exposes several times more); the scrape runs on the event loop that proxies every
    call, so only the wanted lines are handed to it.
    """
    if names is not None:
        prefixes = tuple(names)
        text = "\n".join(line for line in text.splitlines() if line.startswith(prefixes))
        text += "\n"
    values: dict[str, float] = defaultdict(float)
    labels: dict[str, dict[str, str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] += sample.value
            labels.setdefault(sample.name, dict(sample.labels))
    return Samples(dict(values), labels)


class Backend(ABC):
    """An engine replica behind an OpenAI-compatible URL."""

    kind: str = "openai"

    def __init__(
        self, url: str, client: httpx.AsyncClient, *, capacity_tokens: int | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.name = self.url
        self.client = client
        self.configured_capacity = capacity_tokens
        self.metrics = BackendMetrics(capacity_tokens=capacity_tokens)

    async def _get(self, path: str, timeout: float) -> httpx.Response:
        try:
            response = await self.client.get(self.url + path, timeout=timeout)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"{self.url}{path}: {exc!r}") from exc
        if response.status_code >= 500:
            raise BackendUnavailable(f"{self.url}{path}: HTTP {response.status_code}")
        return response

    async def probe(self, timeout: float = 2.0) -> None:
        """Raise BackendUnavailable unless the engine answers its health endpoint."""
        response = await self._get("/health", timeout)
        if response.status_code != 200:
            raise BackendUnavailable(f"{self.url}/health: HTTP {response.status_code}")

    @abstractmethod
    async def scrape(self, timeout: float = 2.0) -> BackendMetrics:
        """Read the engine's current metrics; raise BackendUnavailable when it cannot."""
