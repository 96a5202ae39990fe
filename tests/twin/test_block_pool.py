"""The block pool's books: LRU free queue, hash map, reference counts."""

from __future__ import annotations

import pytest

from thunder_middleware.twin.block_pool import BlockPool


def test_null_block_is_never_handed_out() -> None:
    pool = BlockPool(5)
    assert pool.num_usable_blocks == 4
    taken = pool.allocate(4)
    assert sorted(b.block_id for b in taken) == [1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        pool.allocate(1)


def test_freed_cached_block_stays_findable_until_reused() -> None:
    pool = BlockPool(4)
    a, b, _ = pool.allocate(3)
    pool.cache_block(a, 111, 0)
    pool.cache_block(b, 222, 1)
    pool.free([b, a])  # tail first: b evicted before a
    assert pool.usage == pytest.approx(1 / 3)  # only c is referenced
    assert pool.lookup(111) is a and pool.lookup(222) is b
    (reused,) = pool.allocate(1)
    assert reused is b  # least recently freed goes first
    assert pool.lookup(222) is None and reused.block_hash is None
    assert pool.lookup(111) is a
    assert pool.num_evictions == 1
    assert pool.eviction_log == [(222, 1)]
    pool.check_consistency()


def test_touch_takes_a_free_cached_block_out_of_the_queue() -> None:
    pool = BlockPool(3)
    a, _ = pool.allocate(2)
    pool.cache_block(a, 7, 0)
    pool.free([a])
    assert pool.num_free_blocks == 1
    pool.touch([a])
    assert a.ref_cnt == 1 and pool.num_free_blocks == 0
    pool.touch([a])  # a second user of a shared prefix block
    pool.free([a])
    assert a.ref_cnt == 1 and pool.num_free_blocks == 0
    pool.check_consistency()


def test_too_small_pool_is_rejected() -> None:
    with pytest.raises(ValueError, match="null block"):
        BlockPool(1)
