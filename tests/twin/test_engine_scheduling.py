"""Continuous batching, chunked prefill, recompute preemption, abort and retention."""

from __future__ import annotations

import pytest

from thunder_middleware.twin import EngineRequest, RequestStatus

from .engine_helpers import drain, make_engine, prompt


def test_first_token_comes_in_the_step_that_completes_the_prefill() -> None:
    engine = make_engine(num_blocks=64, block_size=4, max_num_batched_tokens=16)
    engine.add_request(EngineRequest("a", prompt(1, 40), 3))
    _, results = drain(engine)
    # 40 prompt tokens in chunks of 16, 16, 8: the third step yields the first token.
    assert [r.num_scheduled_tokens for r in results] == [16, 16, 8, 1, 1]
    assert [len(r.outputs) for r in results] == [0, 0, 1, 1, 1]
    assert results[-1].outputs[0].finished
    assert all(r.duration_s > 0 for r in results)


def test_budget_and_max_num_seqs_are_respected_every_step() -> None:
    engine = make_engine(num_blocks=400, block_size=4, max_num_batched_tokens=24, max_num_seqs=3)
    for i in range(8):
        engine.add_request(EngineRequest(f"r{i}", prompt(i, 10 + 3 * i), 5 + i))
    tokens, results = drain(engine)
    assert all(r.num_scheduled_tokens <= 24 for r in results)
    assert all(r.num_scheduled_requests <= 3 for r in results)
    assert max(r.num_scheduled_requests for r in results) == 3
    assert {k: len(v) for k, v in tokens.items()} == {f"r{i}": 5 + i for i in range(8)}


def test_waiting_requests_are_admitted_in_arrival_order() -> None:
    engine = make_engine(num_blocks=400, block_size=4, max_num_batched_tokens=64, max_num_seqs=1)
    for i in range(4):
        engine.add_request(EngineRequest(f"r{i}", prompt(i, 8), 2))
    _, results = drain(engine)
    first_seen = []
    for r in results:
        for o in r.outputs:
            if o.request_id not in first_seen:
                first_seen.append(o.request_id)
    assert first_seen == ["r0", "r1", "r2", "r3"]


def test_preemption_evicts_most_recent_which_recomputes_and_finishes() -> None:
    # 8 usable blocks of 4 tokens; three requests of 8 prompt tokens that each grow to 17.
    engine = make_engine(num_blocks=9, block_size=4, max_num_batched_tokens=64)
    for i in range(3):
        engine.add_request(EngineRequest(f"r{i}", prompt(i, 8), 10))
    first = engine.step()  # all three prefilled: 6 blocks held, 2 free
    second = engine.step()  # r0, r1 each need a third block; r2 (last admitted) is preempted
    assert second.preempted_request_ids == ["r2"]
    counts = {"r0": 0, "r1": 0, "r2": 0}
    for output in first.outputs + second.outputs:
        counts[output.request_id] += len(output.new_token_ids)
    assert engine.request_status("r2") is RequestStatus.PREEMPTED
    assert engine.num_blocks_of("r2") == 0
    tokens, results = drain(engine)
    preempted = [rid for r in results for rid in r.preempted_request_ids]
    assert preempted == ["r1"]  # later, r0 needs its fifth block: r1 goes
    final = {o.request_id: o for r in results for o in r.outputs if o.finished}
    assert final["r1"].num_preemptions == 1 and final["r2"].num_preemptions == 1
    assert final["r0"].num_preemptions == 0
    # Everyone still produces exactly max_tokens, including the recomputed requests.
    for request_id, produced in tokens.items():
        counts[request_id] += len(produced)
    assert counts == {"r0": 10, "r1": 10, "r2": 10}
    assert engine.stats.num_preemptions == 2


def test_preempted_request_goes_to_the_front_of_the_waiting_queue() -> None:
    engine = make_engine(num_blocks=9, block_size=4, max_num_batched_tokens=64, max_num_seqs=3)
    for i in range(3):
        engine.add_request(EngineRequest(f"r{i}", prompt(i, 8), 10))
    engine.step()
    engine.add_request(EngineRequest("late", prompt(9, 4), 1))
    result = engine.step()
    assert result.preempted_request_ids == ["r2"]
    # No admissions in a step that preempted; the late request waits behind r2.
    assert engine.request_status("late") is RequestStatus.WAITING
    order = []
    _, results = drain(engine)
    for r in results:
        for o in r.outputs:
            if o.num_output_tokens == 1 or (o.request_id == "r2" and o.num_preemptions):
                order.append(o.request_id)
    assert order.index("r2") < order.index("late")


def test_recompute_after_preemption_counts_prefix_lookup_again() -> None:
    engine = make_engine(num_blocks=9, block_size=4, max_num_batched_tokens=64)
    for i in range(3):
        engine.add_request(EngineRequest(f"r{i}", prompt(i, 8), 10))
    drain(engine)
    stats = engine.stats
    assert stats.prefix_cache_queries_preempted > 0
    assert stats.prefix_cache_queries > 3 * 8
    assert stats.prompt_tokens == 3 * 8  # each prompt counted once


def test_abort_frees_blocks_and_keeps_them_cached() -> None:
    engine = make_engine(num_blocks=64, block_size=4)
    engine.add_request(EngineRequest("a", prompt(1, 20), 50))
    engine.add_request(EngineRequest("w", prompt(2, 20), 5))
    early = [o.request_id for _ in range(2) for o in engine.step().outputs]
    assert early.count("w") == 2
    assert engine.num_blocks_of("a") == 6
    used = engine.stats.kv_cache_usage
    engine.abort_request("a")
    engine.check_invariants()
    assert engine.num_blocks_of("a") == 0
    assert engine.stats.kv_cache_usage < used
    assert engine.stats.num_requests_aborted == 1
    assert engine.peek_prefix_hit([*prompt(1, 20), 7]) == 20  # still cached
    engine.abort_request("a")  # unknown / already gone: ignored
    engine.abort_request("never-added")
    tokens, _ = drain(engine)
    assert len(tokens["w"]) == 3  # 2 + 3 = max_tokens
    assert "a" not in tokens


def test_abort_of_waiting_request() -> None:
    engine = make_engine(num_blocks=64, block_size=4, max_num_seqs=1)
    engine.add_request(EngineRequest("a", prompt(1, 8), 3))
    engine.add_request(EngineRequest("b", prompt(2, 8), 3))
    engine.step()
    assert engine.request_status("b") is RequestStatus.WAITING
    engine.abort_request("b")
    tokens, _ = drain(engine)
    assert set(tokens) == {"a"}
    assert engine.stats.num_waiting == 0


def test_retained_blocks_stay_used_until_released_and_serve_hits() -> None:
    engine = make_engine(num_blocks=64, block_size=4)
    engine.add_request(EngineRequest("pinned", prompt(1, 20), 4, retain_blocks=True))
    tokens, _ = drain(engine)
    assert not engine.has_unfinished_requests()
    stats = engine.stats
    assert stats.num_retained == 1
    assert engine.num_blocks_of("pinned") == 6  # 23 tokens of KV
    assert stats.kv_cache_usage == pytest.approx(6 / 63)
    turn2 = prompt(1, 20) + tokens["pinned"] + [5]
    engine.add_request(EngineRequest("next", turn2, 2))
    drain(engine)
    assert engine.stats.prefix_cache_hits == 20  # 23 tokens of KV: 5 full blocks
    assert engine.release_retained("pinned") is True
    assert engine.release_retained("pinned") is False
    assert engine.stats.kv_cache_usage == 0.0
    # released, still cached until evicted (plus "next"'s own sixth block)
    assert engine.peek_prefix_hit(turn2) == 24
    engine.check_invariants()


def test_retained_blocks_are_not_evicted_by_pressure() -> None:
    engine = make_engine(num_blocks=17, block_size=4)
    engine.add_request(EngineRequest("pinned", prompt(1, 16), 1, retain_blocks=True))
    engine.add_request(EngineRequest("free", prompt(2, 16), 1))
    drain(engine)
    # 16 usable: pinned holds 4; a request needing 12 blocks evicts only the free ones.
    engine.add_request(EngineRequest("big", prompt(3, 45), 1))
    drain(engine)
    assert engine.peek_prefix_hit([*prompt(1, 16), 1]) == 16
    assert engine.peek_prefix_hit([*prompt(2, 16), 1]) == 0


def test_invalid_requests_are_rejected_clearly() -> None:
    engine = make_engine(num_blocks=9, block_size=4, max_model_len=64)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request(EngineRequest("a", [], 1))
    with pytest.raises(ValueError, match="max_tokens"):
        engine.add_request(EngineRequest("a", [1, 2], 0))
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request(EngineRequest("a", prompt(1, 60), 10))
    with pytest.raises(ValueError, match="KV blocks"):
        engine.add_request(EngineRequest("a", prompt(1, 40), 1))
    with pytest.raises(ValueError, match="output_token_ids"):
        engine.add_request(EngineRequest("a", [1, 2], 3, output_token_ids=[5, 6]))
    engine.add_request(EngineRequest("a", [1, 2], 2, output_token_ids=[5, 6, 7]))
    with pytest.raises(ValueError, match="already"):
        engine.add_request(EngineRequest("a", [1, 2], 2))
    tokens, _ = drain(engine)
    assert tokens["a"] == [5, 6]


def test_synthetic_ids_are_deterministic_and_in_vocab() -> None:
    runs = []
    for _ in range(2):
        engine = make_engine(num_blocks=64, block_size=4)
        engine.add_request(EngineRequest("x", prompt(1, 5), 50))
        engine.add_request(EngineRequest("y", prompt(1, 5), 50))
        tokens, _ = drain(engine)
        runs.append(tokens)
    assert runs[0] == runs[1]
    assert runs[0]["x"] != runs[0]["y"]
    assert all(0 < t < 32000 for t in runs[0]["x"] + runs[0]["y"])


def test_idle_engine_steps_take_no_time() -> None:
    engine = make_engine(num_blocks=9)
    result = engine.step()
    assert result.duration_s == 0.0 and result.outputs == [] and result.num_scheduled_tokens == 0
