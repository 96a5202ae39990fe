"""Property tests: whatever sequence of adds, steps, aborts and releases, the block books
balance, finished requests hold no blocks unless retained, and every request that is not
aborted produces exactly max_tokens tokens."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thunder_middleware.twin import EngineRequest

from .engine_helpers import drain, make_engine, prompt

_add = st.tuples(
    st.just("add"),
    st.integers(0, 3),  # prefix family: requests of one family share a prefix
    st.integers(1, 40),  # prompt length
    st.integers(1, 12),  # max_tokens
    st.booleans(),  # retain_blocks
)
_step = st.tuples(st.just("step"), st.integers(1, 4))
_abort = st.tuples(st.just("abort"), st.integers(0, 30))
_release = st.tuples(st.just("release"), st.integers(0, 30))
_ops = st.lists(st.one_of(_add, _step, _step, _abort, _release), max_size=60)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=_ops,
    num_blocks=st.integers(14, 40),
    block_size=st.sampled_from([1, 2, 4, 8]),
    budget=st.integers(4, 64),
    max_seqs=st.integers(1, 6),
)
def test_books_balance_under_any_interleaving(
    ops: list[tuple], num_blocks: int, block_size: int, budget: int, max_seqs: int
) -> None:
    engine = make_engine(num_blocks, block_size, budget, max_seqs)
    usable = num_blocks - 1
    expected: dict[str, int] = {}
    produced: dict[str, int] = {}
    aborted: set[str] = set()
    retained: set[str] = set()
    added: list[str] = []

    def record(outputs: list) -> None:
        for output in outputs:
            produced[output.request_id] = produced.get(output.request_id, 0) + len(
                output.new_token_ids
            )
            assert output.num_output_tokens == produced[output.request_id]
            if output.finished:
                assert produced[output.request_id] == expected[output.request_id]
                assert engine.request_status(output.request_id) is None

    for op in ops:
        if op[0] == "add":
            _, family, length, max_tokens, retain = op
            if -(-(length + max_tokens - 1) // block_size) > usable // 2:
                continue  # keep retained requests from pinning the whole cache
            request_id = f"r{len(added)}"
            added.append(request_id)
            expected[request_id] = max_tokens
            engine.add_request(
                EngineRequest(request_id, prompt(family, length), max_tokens, retain_blocks=retain)
            )
            if retain:
                retained.add(request_id)
        elif op[0] == "step":
            for _ in range(op[1]):
                result = engine.step()
                assert result.num_scheduled_tokens <= budget
                assert result.num_scheduled_requests <= max_seqs
                record(result.outputs)
        elif op[0] == "abort" and added:
            request_id = added[op[1] % len(added)]
            if engine.request_status(request_id) is not None:
                aborted.add(request_id)
            engine.abort_request(request_id)
            retained.discard(request_id)
        elif op[0] == "release" and added:
            request_id = added[op[1] % len(added)]
            if engine.request_status(request_id) is None:
                engine.release_retained(request_id)
                retained.discard(request_id)
        engine.check_invariants()
        stats = engine.stats
        assert stats.num_free_blocks + round(stats.kv_cache_usage * usable) == usable
        for request_id in added:
            if engine.request_status(request_id) is None and request_id not in retained:
                assert engine.num_blocks_of(request_id) == 0

    # Pinned blocks could starve the queue: release them all (an unfinished request then
    # frees its blocks normally when it finishes), and everything finishes.
    for request_id in list(retained):
        engine.release_retained(request_id)
    _, results = drain(engine)
    for result in results:
        record(result.outputs)
    for request_id, max_tokens in expected.items():
        if request_id not in aborted:
            assert produced.get(request_id, 0) == max_tokens, request_id
    assert engine.stats.kv_cache_usage == 0.0
    assert engine.stats.num_free_blocks == usable
    engine.check_invariants()
