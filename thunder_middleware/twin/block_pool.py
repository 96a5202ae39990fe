"""The paged KV block pool: blocks, their reference counts, the LRU free queue and the map
from block hash to cached block (vLLM v1 ``BlockPool`` / ``FreeKVCacheBlockQueue``).

A freed block keeps its hash and stays findable through the map until allocation takes it
from the head of the free queue; that is what makes prefix caching survive the end of a
request, and what lets other requests' allocations evict it (LRU).

Mirrors vLLM, with two simplifications: the free queue is an ``OrderedDict`` (O(1) append,
pop-head and remove, like vLLM's hand-made doubly linked list), and when two blocks end up
with the same hash (two requests computed the same block before either was cached), only the
first is findable; vLLM keeps both reachable. Block 0 is the null block, never allocated, as
in vLLM, so ``num_blocks - 1`` blocks hold KV.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class KVBlock:
    """One block of ``block_size`` token slots. ``block_hash`` is set once the block is full
    and cached; ``ref_cnt`` counts the live requests (or retentions) using it."""

    __slots__ = ("block_hash", "block_id", "depth", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: int | None = None
        self.depth = 0  # position of the block in its hash chain, once cached

    def __repr__(self) -> str:
        return f"KVBlock({self.block_id}, ref={self.ref_cnt}, hash={self.block_hash})"


class BlockPool:
    """Owns every block. Policy (which request gets blocks, who is preempted) lives in the
    scheduler; this class only keeps the books consistent."""

    NULL_BLOCK_ID = 0
    MAX_EVICTION_LOG = 1 << 18  # past this, the log restarts and memos fall back to a rescan

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2 (one is the null block), got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        # Free blocks in eviction order: head = least recently freed = next to be reused.
        self.free_queue: OrderedDict[int, KVBlock] = OrderedDict(
            (block.block_id, block) for block in self.blocks[1:]
        )
        self.cached: dict[int, KVBlock] = {}
        # (hash, chain depth) of every eviction since ``eviction_log_base``: lets a waiting
        # request re-validate its last prefix hit in O(evictions) instead of O(prompt).
        self.eviction_log: list[tuple[int, int]] = []
        self.eviction_log_base = 0

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def num_referenced_blocks(self) -> int:
        return self.num_usable_blocks - len(self.free_queue)

    @property
    def num_evictions(self) -> int:
        """Evictions so far; also the position just past the end of the eviction log."""
        return self.eviction_log_base + len(self.eviction_log)

    @property
    def usage(self) -> float:
        """vLLM's ``kv_cache_usage_perc``: cached-but-free blocks count as free."""
        return 1.0 - len(self.free_queue) / self.num_usable_blocks

    def lookup(self, block_hash: int) -> KVBlock | None:
        return self.cached.get(block_hash)

    def allocate(self, count: int) -> list[KVBlock]:
        """Take ``count`` blocks from the head of the free queue, evicting their hashes.
        The caller has checked that enough are free."""
        if count > len(self.free_queue):
            raise RuntimeError(f"allocate({count}) with only {len(self.free_queue)} free blocks")
        taken: list[KVBlock] = []
        popitem = self.free_queue.popitem
        cached = self.cached
        log = self.eviction_log
        for _ in range(count):
            block = popitem(last=False)[1]
            block_hash = block.block_hash
            if block_hash is not None:
                if cached.get(block_hash) is block:
                    del cached[block_hash]
                log.append((block_hash, block.depth))
                block.block_hash = None
            block.ref_cnt = 1
            taken.append(block)
        if len(log) > self.MAX_EVICTION_LOG:
            self.eviction_log_base += len(log)
            log.clear()
        return taken

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """A prefix hit: the blocks gain a user; free ones leave the free queue."""
        free_queue = self.free_queue
        for block in blocks:
            if block.ref_cnt == 0:
                del free_queue[block.block_id]
            block.ref_cnt += 1

    def free(self, blocks_in_eviction_order: Iterable[KVBlock]) -> None:
        """Drop one user from each block; unused blocks that hold a cached (hashed) chain
        join the tail of the free queue in the given order (callers pass a request's blocks
        tail first, so the ends of chains are evicted before their beginnings), while
        unhashed blocks (a request's never-full last block) go to the head, to be reused
        first since nothing can hit them. That is vLLM's ``BlockPool.free_blocks``; without
        the head rule each finished request cost one cached block (measured: -0.9 % cached
        tokens against real vLLM on the 16-program trace, -0.1 % with it)."""
        free_queue = self.free_queue
        unhashed: list[KVBlock] = []
        for block in blocks_in_eviction_order:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    unhashed.append(block)
                else:
                    free_queue[block.block_id] = block
        for block in reversed(unhashed):
            free_queue[block.block_id] = block
            free_queue.move_to_end(block.block_id, last=False)

    def cache_block(self, block: KVBlock, block_hash: int, depth: int) -> None:
        """Mark a now-full block as holding the chain ``block_hash`` at position ``depth``."""
        block.block_hash = block_hash
        block.depth = depth
        self.cached.setdefault(block_hash, block)

    def check_consistency(self) -> None:
        """Invariants for tests: every usable block is either free (ref 0, in the queue) or
        referenced; every cached entry points at a block carrying that hash."""
        for block in self.blocks[1:]:
            in_queue = block.block_id in self.free_queue
            if in_queue != (block.ref_cnt == 0):
                raise AssertionError(f"{block} in_queue={in_queue}")
            if block.ref_cnt < 0:
                raise AssertionError(f"{block} has a negative ref count")
        for block_hash, block in self.cached.items():
            if block.block_hash != block_hash:
                raise AssertionError(f"cache entry {block_hash} points at {block}")
