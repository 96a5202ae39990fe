"""Automatic prefix caching as vLLM v1 does it: chained full-block hashes, cached blocks
outliving their request, LRU eviction with chain tails first."""

from __future__ import annotations

from thunder_middleware.twin import EngineRequest, RequestStatus

from .engine_helpers import drain, make_engine, prompt


def test_second_turn_hits_all_full_blocks_of_the_first_turn() -> None:
    engine = make_engine(num_blocks=64, block_size=4)
    turn1 = prompt(1, 29)
    engine.add_request(EngineRequest("t1", turn1, 7))
    tokens, _ = drain(engine)
    assert len(tokens["t1"]) == 7
    # Turn 1 computed KV for 29 + 7 - 1 = 35 tokens: 8 full blocks, the last 4 of them
    # holding generated tokens.
    turn2 = turn1 + tokens["t1"] + prompt(2, 5)
    assert engine.peek_prefix_hit(turn2) == 32
    engine.add_request(EngineRequest("t2", turn2, 3))
    drain(engine)
    stats = engine.stats
    assert stats.prefix_cache_hits == 32
    assert stats.prefix_cache_queries == len(turn1) + len(turn2)


def test_cached_tokens_reported_on_every_output_of_the_request() -> None:
    engine = make_engine(num_blocks=64, block_size=4)
    engine.add_request(EngineRequest("a", prompt(1, 20), 2))
    drain(engine)
    engine.add_request(EngineRequest("b", prompt(1, 20) + prompt(3, 6), 4))
    _, results = drain(engine)
    cached = {o.num_cached_tokens for r in results for o in r.outputs}
    assert cached == {20}


def test_fully_cached_prompt_recomputes_its_last_block() -> None:
    engine = make_engine(num_blocks=64, block_size=4)
    engine.add_request(EngineRequest("a", prompt(1, 16), 1))
    drain(engine)
    assert engine.peek_prefix_hit(prompt(1, 16)) == 12  # capped below the whole prompt
    assert engine.peek_prefix_hit(prompt(1, 17)) == 16
    assert engine.peek_prefix_hit(prompt(2, 17)) == 0


def test_peek_has_no_side_effects() -> None:
    engine = make_engine(num_blocks=64, block_size=4)
    engine.add_request(EngineRequest("a", prompt(1, 16), 1))
    drain(engine)
    before = engine.stats
    for _ in range(3):
        engine.peek_prefix_hit(prompt(1, 17))
    after = engine.stats
    assert before == after


def test_cached_blocks_outlive_request_and_are_evicted_lru_tails_first() -> None:
    # 12 usable blocks of 4 tokens. Request A (4 full blocks) finishes; then B and C,
    # unrelated, take fresh blocks. A's blocks are the most recently freed, so they are
    # reused last, and within A the tail block goes first.
    engine = make_engine(num_blocks=13, block_size=4)
    a_prompt = prompt(1, 16)
    engine.add_request(EngineRequest("a", a_prompt, 1))
    drain(engine)
    probe = [*a_prompt, 999_999]
    assert engine.peek_prefix_hit(probe) == 16
    assert engine.stats.kv_cache_usage == 0.0  # cached but free

    # B needs 8 blocks: the 8 never-used blocks come first (they were freed at start-up,
    # before A's), so A survives intact.
    engine.add_request(EngineRequest("b", prompt(2, 30), 3))
    for _ in range(2):
        engine.step()
    assert engine.num_blocks_of("b") == 8
    assert engine.peek_prefix_hit(probe) == 16

    # C needs 2 more blocks while B still holds 8: only A's 4 blocks are free; the two
    # taken are A's chain tail (blocks 3 and 2), so A's prefix of 2 blocks still hits.
    engine.add_request(EngineRequest("c", prompt(3, 6), 1))
    engine.step()
    assert engine.peek_prefix_hit(probe) == 8
    drain(engine)


def test_blocked_request_sees_its_prefix_shrink_as_blocks_are_evicted() -> None:
    # 29 usable blocks of 4. A caches an 8-block prefix P; R (15 blocks, growing to 25)
    # runs; W = P + 40 tokens needs 18 blocks from the free queue and waits. As R grows it
    # reuses free blocks from the head: first the never-used ones, then P's tail (freed
    # tail first). W's remembered hit must follow exactly (check_invariants compares it
    # with a fresh lookup after every step).
    engine = make_engine(num_blocks=30, block_size=4)
    shared = prompt(1, 32)
    engine.add_request(EngineRequest("a", shared, 1))
    drain(engine)
    engine.add_request(EngineRequest("r", prompt(2, 60), 40))
    engine.step()
    engine.add_request(EngineRequest("w", shared + prompt(3, 40), 2))
    engine.step()
    assert engine.request_status("w") is RequestStatus.WAITING
    assert engine._requests["w"].prefix_memo is not None  # the remembered lookup is in use
    _, results = drain(engine)
    first_w = next(o for r in results for o in r.outputs if o.request_id == "w")
    assert first_w.num_cached_tokens == 16  # R evicted P's last 4 blocks
