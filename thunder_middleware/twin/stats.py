"""Engine counters and gauges, with the meaning vLLM gives the metrics of the same name, so
that the twin's ``/metrics`` and the simulator read like a real replica's.

Counting conventions (vLLM v1):
- ``prefix_cache_queries`` / ``prefix_cache_hits`` are tokens, recorded when a waiting
  request is admitted (the lookup that led to scheduling, not retries that failed to get
  blocks). A request re-admitted after preemption is counted again; the ``*_preempted``
  counters hold that share separately, because vLLM >= 0.11 exports only the part from
  first admissions in ``vllm:prefix_cache_*`` (the rest under ``preempted`` stats).
- ``prompt_tokens`` counts a request's prompt once, when its first token is produced;
  ``generation_tokens`` counts every produced token.
- ``kv_cache_usage`` is the fraction of usable blocks referenced by live (or retained)
  requests; cached blocks sitting in the free queue count as free.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class EngineStats:
    # counters
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prefix_cache_queries_preempted: int = 0
    prefix_cache_hits_preempted: int = 0
    num_preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_requests_finished: int = 0
    num_requests_aborted: int = 0
    num_block_evictions: int = 0  # cached blocks whose hash was dropped on reuse
    num_steps: int = 0  # steps that scheduled something
    busy_time_s: float = 0.0  # sum of modeled step durations
    # gauges (filled when a snapshot is taken)
    num_running: int = 0
    num_waiting: int = 0
    num_retained: int = 0  # finished requests whose blocks are pinned (retain_blocks)
    kv_cache_usage: float = 0.0
    num_free_blocks: int = 0
    num_blocks: int = 0
    block_size: int = 0

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Hits over queries, all admissions included (0.0 before any)."""
        if self.prefix_cache_queries == 0:
            return 0.0
        return self.prefix_cache_hits / self.prefix_cache_queries
