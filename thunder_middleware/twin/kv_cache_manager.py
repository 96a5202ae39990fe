"""Per-request KV bookkeeping over the block pool: block hashing, prefix lookup, slot
allocation and freeing (vLLM v1 ``KVCacheManager`` with one full-attention KV group).

Block hashes chain: ``h_i = hash((h_{i-1}, *tokens of block i))``, so a hit on block i
implies the whole prefix up to i matches. Only full blocks are hashed and cached, including
blocks filled by generated tokens: turn t+1 of a conversation, whose prompt extends turn t's
prompt and output, hits them. A block is hashed once, when it first needs to be (lookup or
caching), so a decode step costs O(1) per request rather than O(context).

Simplifications against vLLM: one KV cache group (no hybrid/sliding-window models), no
speculative-decode lookahead slots, no KV connector, no watermark, Python's tuple hash
instead of sha256 (collisions are negligible at 64 bits and the twin runs in one process).
"""

from __future__ import annotations

from collections.abc import Sequence

from thunder_middleware.twin.block_pool import BlockPool, KVBlock
from thunder_middleware.twin.request import RequestState

ROOT_HASH = 0x7468756E  # parent of every chain's first block (vLLM's NONE_HASH)


def chain_hashes(token_ids: Sequence[int], block_size: int, num_blocks: int,
                 hashes: list[int]) -> None:
    """Extend ``hashes`` (the chain of the first ``len(hashes)`` blocks of ``token_ids``)
    to ``num_blocks`` entries."""
    start = len(hashes)
    parent = hashes[-1] if start else ROOT_HASH
    for index in range(start, num_blocks):
        offset = index * block_size
        parent = hash((parent, *token_ids[offset : offset + block_size]))
        hashes.append(parent)


class KVCacheManager:
    """Block accounting for requests. A request's blocks are ``request.kv_blocks``; this
    class is the only one that changes them."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)

    # ---- lookup -------------------------------------------------------------------------

    def find_cached_prefix(self, request: RequestState) -> list[KVBlock]:
        """Longest chain of cached full blocks of the request's tokens, capped below the
        whole sequence: at least the last token is recomputed (to get logits), and since
        hits are whole blocks, a fully cached prompt recomputes its last block.

        A request stuck at the head of the waiting queue is looked up every step; its last
        result is remembered (``request.prefix_memo``) and re-validated against the blocks
        evicted since, so a blocked 50k-token prompt costs O(evictions) per step, not
        O(prompt). The answer is the same as a full rescan."""
        max_blocks = (len(request.token_ids) - 1) // self.block_size
        hashes = request.block_hashes
        if len(hashes) < max_blocks:
            chain_hashes(request.token_ids, self.block_size, max_blocks, hashes)
        pool = self.pool
        memo = request.prefix_memo
        if memo is not None and memo[1] >= pool.eviction_log_base:
            hit, seen = memo
            for block_hash, depth in pool.eviction_log[seen - pool.eviction_log_base :]:
                if depth < len(hit) and hashes[depth] == block_hash:
                    del hit[depth:]  # the chain broke there (it may be re-found below)
        else:
            hit = []
        lookup = pool.cached.get
        for index in range(len(hit), max_blocks):
            block = lookup(hashes[index])
            if block is None:
                break
            hit.append(block)
        request.prefix_memo = (hit, pool.num_evictions)
        return hit

    def peek_prefix_hit(self, token_ids: Sequence[int]) -> int:
        """Tokens a request with this prompt would hit now, without touching anything."""
        max_blocks = (len(token_ids) - 1) // self.block_size
        cached = self.pool.cached
        parent = ROOT_HASH
        hits = 0
        for index in range(max_blocks):
            offset = index * self.block_size
            parent = hash((parent, *token_ids[offset : offset + self.block_size]))
            if parent not in cached:
                break
            hits += 1
        return hits * self.block_size

    # ---- allocation ---------------------------------------------------------------------

    def allocate_slots(
        self,
        request: RequestState,
        num_new_tokens: int,
        num_computed_tokens: int,
        computed_blocks: Sequence[KVBlock] = (),
    ) -> bool:
        """Give the request slots for ``num_new_tokens`` more tokens after
        ``num_computed_tokens`` (which, for a new request, are covered by the prefix hit
        ``computed_blocks``). Returns False, changing nothing, if the free queue is too short.
        Hit blocks that are currently free count against the free queue too, since taking
        them removes them from it (vLLM's ``num_evictable_computed_blocks``)."""
        block_size = self.block_size
        total_tokens = num_computed_tokens + num_new_tokens
        blocks = request.kv_blocks
        if blocks is not None and total_tokens <= len(blocks) * block_size:
            # The common decode case: the slot exists; at most one block just filled up.
            if total_tokens // block_size > request.num_cached_blocks:
                self._cache_full_blocks(request, total_tokens)
            return True
        num_held = len(blocks) if blocks is not None else 0
        num_new_blocks = -(-total_tokens // block_size) - num_held - len(computed_blocks)
        if num_new_blocks < 0:
            num_new_blocks = 0
        pool = self.pool
        num_free = len(pool.free_queue)
        if num_new_blocks > num_free:
            return False  # short even if no hit block needs taking from the free queue
        if computed_blocks:
            num_evictable = [block.ref_cnt for block in computed_blocks].count(0)
            if num_new_blocks + num_evictable > num_free:
                return False
        request.prefix_memo = None
        if blocks is None:
            blocks = request.kv_blocks = []
            request.num_cached_blocks = 0
        if computed_blocks:
            pool.touch(computed_blocks)
            blocks.extend(computed_blocks)
            request.num_cached_blocks = len(blocks)
        if num_new_blocks:
            blocks.extend(pool.allocate(num_new_blocks))
        if total_tokens // block_size > request.num_cached_blocks:
            self._cache_full_blocks(request, total_tokens)
        return True

    def _cache_full_blocks(self, request: RequestState, num_tokens: int) -> None:
        """Hash and publish the blocks that are full once ``num_tokens`` have KV."""
        assert request.kv_blocks is not None
        num_full = num_tokens // self.block_size
        hashes = request.block_hashes
        if len(hashes) < num_full:
            chain_hashes(request.token_ids, self.block_size, num_full, hashes)
        cache_block = self.pool.cache_block
        blocks = request.kv_blocks
        for index in range(request.num_cached_blocks, num_full):
            cache_block(blocks[index], hashes[index], index)
        request.num_cached_blocks = num_full

    def free(self, request: RequestState) -> None:
        """Release a request's blocks, tail first (its last block is evicted first)."""
        blocks = request.kv_blocks
        request.kv_blocks = None
        request.num_cached_blocks = 0
        if blocks:
            self.pool.free(reversed(blocks))

    @property
    def usage(self) -> float:
        return self.pool.usage
