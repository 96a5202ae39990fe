"""SGLang (launched with ``--enable-metrics``).

What SGLang's docs and collector show (docs.sglang.io "Production Metrics",
python/sglang/srt/metrics/collector.py): ``sglang:token_usage`` (KV fraction in use),
``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:cache_hit_rate`` (a gauge,
not counters), ``sglang:prompt_tokens_total`` and ``sglang:cached_tokens_total`` (newer
versions), and in some versions ``sglang:max_total_num_tokens``. Capacity otherwise comes
from ``GET /get_server_info`` (``max_total_num_tokens``), else from --backend-capacity.
SGLang reports no preemption counter with vLLM's meaning, so that stays None.
"""

from __future__ import annotations

from thunder_middleware.sidecar.backends.base import (
    Backend,
    BackendMetrics,
    BackendUnavailable,
    parse_samples,
)


class SGLangBackend(Backend):
    kind = "sglang"
    _info_capacity: int | None = None

    async def _server_capacity(self, timeout: float) -> int | None:
        response = await self._get("/get_server_info", timeout)
        if response.status_code != 200:
            return None
        try:
            value = response.json().get("max_total_num_tokens")
        except ValueError:
            return None
        return int(value) if value else None

    async def scrape(self, timeout: float = 2.0) -> BackendMetrics:
        response = await self._get("/metrics", timeout)
        if response.status_code != 200:
            raise BackendUnavailable(f"{self.url}/metrics: HTTP {response.status_code}")
        samples = parse_samples(response.text)
        capacity = samples.get("sglang:max_total_num_tokens")
        if capacity:
            capacity_tokens: int | None = int(capacity)
        else:
            if self._info_capacity is None:
                self._info_capacity = await self._server_capacity(timeout)
            capacity_tokens = self._info_capacity or self.configured_capacity
        if not capacity_tokens:
            raise BackendUnavailable(f"{self.url}: SGLang capacity unknown; set --backend-capacity")
        prompt = samples.get("sglang:prompt_tokens_total")
        cached = samples.get("sglang:cached_tokens_total")
        self.metrics = BackendMetrics(
            capacity_tokens=capacity_tokens,
            kv_usage=samples.get("sglang:token_usage"),
            prefix_cache_queries=prompt if cached is not None else None,
            prefix_cache_hits=cached,
            running=samples.get("sglang:num_running_reqs"),
            waiting=samples.get("sglang:num_queue_reqs"),
            extra={"cache_hit_rate": samples.get("sglang:cache_hit_rate") or 0.0},
        )
        return self.metrics
