"""Requests as the engine core sees them: the public input/output records and the mutable
per-request state the scheduler and the KV cache manager share.

Output token ids are fixed before the request runs (the content layer has already decided
how many tokens the reply has and, optionally, which ones), so the engine never samples:
it only decides *when* each token comes out. Deterministic ids derived from the request id
keep replays reproducible across processes (``hash(str)`` is salted per process, so a CRC is
used instead).
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thunder_middleware.twin.block_pool import KVBlock


@dataclass(slots=True)
class EngineRequest:
    """What a caller submits. ``max_tokens`` is the number of tokens the request WILL
    generate (not an upper bound): the content layer sampled it beforehand."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    output_token_ids: list[int] | None = None
    # Keep the request's blocks referenced after it finishes, until
    # ``EngineCore.release_retained(request_id)``: the TTL-pinning baseline (Continuum).
    retain_blocks: bool = False


@dataclass(slots=True)
class RequestOutput:
    """One per request that produced tokens in a step."""

    request_id: str
    new_token_ids: list[int]
    finished: bool
    num_prompt_tokens: int
    num_cached_tokens: int  # prefix-cache hit at first scheduling (vLLM semantics)
    num_preemptions: int
    num_output_tokens: int = 0  # tokens generated so far, including new_token_ids


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # back in the waiting queue, to be recomputed
    FINISHED = "finished"
    ABORTED = "aborted"


_GOLDEN = 2_654_435_761  # Knuth's multiplicative constant: spreads consecutive positions


def output_seed(request_id: str) -> int:
    return zlib.crc32(request_id.encode("utf-8"))


def synthetic_output_id(seed: int, position: int, vocab_size: int) -> int:
    """Deterministic id in ``[1, vocab_size)`` for output ``position``: id 0 is avoided
    because tokenizers commonly reserve it (padding / unknown). Computed one at a time, so a
    request with a huge ``max_tokens`` costs nothing up front."""
    return 1 + (seed + (position + 1) * _GOLDEN) % (vocab_size - 1)


class RequestState:
    """Mutable state of one request inside the core.

    ``token_ids`` holds the prompt followed by the tokens generated so far (in vLLM, the
    request's ``all_token_ids``); ``num_computed_tokens`` of them have KV in the cache.
    ``block_hashes`` is filled lazily, one entry per full block of ``token_ids``, by the
    KV cache manager: a block is hashed once, when it is first needed. ``kv_blocks`` (None
    while the request holds no KV) and ``num_cached_blocks`` (how many of them are hashed and
    findable) belong to the KV cache manager; they live here so that a decode step reaches
    them without a dictionary lookup.
    """

    __slots__ = (
        "block_hashes",
        "kv_blocks",
        "max_tokens",
        "num_cached_blocks",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_output_tokens",
        "num_preemptions",
        "num_prompt_tokens",
        "output_plan",
        "output_seed",
        "prefix_memo",
        "request_id",
        "retain_blocks",
        "status",
        "token_ids",
        "vocab_size",
    )

    def __init__(self, request: EngineRequest, vocab_size: int) -> None:
        self.request_id = request.request_id
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.max_tokens = request.max_tokens
        self.output_plan = request.output_token_ids
        self.output_seed = output_seed(request.request_id)
        self.vocab_size = vocab_size
        self.retain_blocks = request.retain_blocks
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.num_cached_tokens = -1  # unset until first scheduled
        self.num_preemptions = 0
        self.block_hashes: list[int] = []
        self.kv_blocks: list[KVBlock] | None = None
        self.num_cached_blocks = 0
        # last prefix hit while waiting, and the pool's eviction count at that time
        self.prefix_memo: tuple[list[KVBlock], int] | None = None
        self.status = RequestStatus.WAITING

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def append_output_token(self) -> int:
        position = self.num_output_tokens
        plan = self.output_plan
        if plan is not None:
            token = plan[position]
        else:
            token = synthetic_output_id(self.output_seed, position, self.vocab_size)
        self.token_ids.append(token)
        self.num_output_tokens = position + 1
        return token

    @property
    def is_finished(self) -> bool:
        return self.num_output_tokens >= self.max_tokens

    def __repr__(self) -> str:
        return (
            f"RequestState({self.request_id!r}, {self.status.value}, "
            f"computed={self.num_computed_tokens}/{self.num_tokens}, "
            f"out={self.num_output_tokens}/{self.max_tokens})"
        )
