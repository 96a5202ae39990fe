"""The phenomenon the project exists for: as concurrent multi-turn programs outgrow the KV
cache, LRU eviction of acting programs' blocks collapses the prefix hit rate."""

from __future__ import annotations

from .engine_helpers import closed_loop_hit_rate


def test_hit_rate_falls_as_programs_outgrow_the_cache() -> None:
    # 119 usable blocks of 16 tokens (~1.9k tokens); each program reaches ~0.5k tokens.
    rates = {n: closed_loop_hit_rate(n, num_blocks=120) for n in (2, 8, 16, 32)}
    assert rates[2] > 0.8  # fits: every later turn hits all but its new tokens
    assert rates[2] >= rates[8] > rates[16] > rates[32]
    assert rates[32] < 0.3  # only the shared system prompt still hits


def test_ample_cache_keeps_hits_high_at_the_same_concurrency() -> None:
    assert closed_loop_hit_rate(32, num_blocks=2000) > 0.8
