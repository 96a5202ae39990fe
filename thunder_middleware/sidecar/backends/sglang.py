"""SGLang (launched with ``--enable-metrics``).

What SGLang's docs and collector show (docs.sglang.io "Production Metrics",
python/sglang/srt/metrics/collector.py): ``sglang:token_usage`` (KV fraction in use),
``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:cache_hit_rate`` (a gauge,
not counters), ``sglang:prompt_tokens_total`` and ``sglang:cached_tokens_total`` (newer
versions), and in some versions ``sglang:max_total_num_tokens``. Capacity otherwise comes
from ``GET /get_server_info`` or ``/server_info`` (``max_total_num_tokens``), else from
--backend-capacity.
SGLang reports no preemption counter with vLLM's meaning, so that stays None.

A /metrics text that does not parse is a failed scrape (BackendUnavailable, as for vLLM), and
a capacity that is not a positive finite number counts as not given.
"""

from __future__ import annotations

import math

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
        # /get_server_info is a deprecated alias of /server_info in newer SGLang; the value
        # is at the top level, or in the per-DP-rank internal_states
        for path in ("/get_server_info", "/server_info"):
            response = await self._get(path, timeout)
            if response.status_code != 200:
                continue
            try:
                info = response.json()
            except ValueError:
                continue
            if not isinstance(info, dict):
                continue
            states = info.get("internal_states")
            first_state = states[0] if isinstance(states, list) and states else None
            found = _capacity(info.get("max_total_num_tokens")) or _capacity(
                first_state.get("max_total_num_tokens") if isinstance(first_state, dict)
                else None)
            if found:
                return found
        return None

    async def scrape(self, timeout: float = 2.0) -> BackendMetrics:
        response = await self._get("/metrics", timeout)
        if response.status_code != 200:
            raise BackendUnavailable(f"{self.url}/metrics: HTTP {response.status_code}")
        try:
            samples = parse_samples(response.text)
        except ValueError as exc:  # unparsable exposition text
            raise BackendUnavailable(f"{self.url}/metrics unreadable: {exc}") from exc
        capacity_tokens = _capacity(samples.get("sglang:max_total_num_tokens"))
        if capacity_tokens is None:
            if self._info_capacity is None:  # asked once; 0 = the server does not say
                self._info_capacity = await self._server_capacity(timeout) or 0
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


def _capacity(value: object) -> int | None:
    """A token capacity from a gauge or a JSON field: a positive finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 1:
        return None
    return int(value)
