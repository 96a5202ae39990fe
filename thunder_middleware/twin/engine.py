"""The engine core: a vLLM replica's scheduler and KV cache without the GPU.

Pure Python, no I/O, no clock: ``step()`` schedules one batch, asks the step-time model how
long it would have taken on the modeled GPU, advances the requests, and returns that
duration; the caller advances whatever clock it runs (virtual in ``sim/``, scaled real time
in ``twin/server.py``). Everything is deterministic given the sequence of calls.

What is mirrored from vLLM v1 and what is simplified is said in ``block_pool.py``,
``kv_cache_manager.py`` and ``scheduler.py``. Beyond vLLM, ``EngineRequest.retain_blocks``
keeps a finished request's blocks referenced until ``release_retained`` (the TTL-pinning
baseline of the simulator), and ``peek_prefix_hit`` answers "how much would hit now" without
side effects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from thunder_middleware.twin.kv_cache_manager import KVCacheManager
from thunder_middleware.twin.request import (
    EngineRequest,
    RequestOutput,
    RequestState,
    RequestStatus,
)
from thunder_middleware.twin.roofline import StepTimeModel, roofline_for
from thunder_middleware.twin.scheduler import Scheduler
from thunder_middleware.twin.stats import EngineStats


def _default_step_model() -> StepTimeModel:
    return roofline_for("h100", "qwen3-8b")


@dataclass
class EngineConfig:
    num_blocks: int
    block_size: int = 16
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024
    max_model_len: int = 131072
    step_model: StepTimeModel = field(default_factory=_default_step_model)
    vocab_size: int = 32000  # range of synthetic output ids: [1, vocab_size)


@dataclass(slots=True)
class StepResult:
    duration_s: float  # modeled time of this step (0.0 if nothing was scheduled)
    outputs: list[RequestOutput]
    num_scheduled_tokens: int
    num_scheduled_requests: int = 0
    preempted_request_ids: list[str] = field(default_factory=list)


class EngineCore:
    def __init__(self, config: EngineConfig) -> None:
        if config.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {config.vocab_size}")
        self.config = config
        self._kv = KVCacheManager(config.num_blocks, config.block_size)
        self._stats = EngineStats(num_blocks=config.num_blocks, block_size=config.block_size)
        self._scheduler = Scheduler(
            self._kv, self._stats, config.max_num_batched_tokens, config.max_num_seqs
        )
        self._step_model = config.step_model
        self._requests: dict[str, RequestState] = {}  # unfinished, by id

    # ---- requests -----------------------------------------------------------------------

    def add_request(self, request: EngineRequest) -> None:
        """Queue a request. Raises ValueError for input no vLLM replica would accept (the
        server turns it into a 400) rather than letting it wedge the queue."""
        request_id = request.request_id
        if request_id in self._requests or request_id in self._scheduler.retained:
            raise ValueError(f"request id {request_id!r} is already in the engine")
        num_prompt = len(request.prompt_token_ids)
        if num_prompt == 0:
            raise ValueError("prompt_token_ids is empty")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        max_model_len = self.config.max_model_len
        if num_prompt + request.max_tokens > max_model_len:
            raise ValueError(
                f"prompt ({num_prompt} tokens) + max_tokens ({request.max_tokens}) exceeds "
                f"max_model_len ({max_model_len})"
            )
        # The last generated token never gets KV, hence the -1.
        blocks_needed = -(-(num_prompt + request.max_tokens - 1) // self.config.block_size)
        if blocks_needed > self._kv.pool.num_usable_blocks:
            raise ValueError(
                f"request needs {blocks_needed} KV blocks but the cache holds "
                f"{self._kv.pool.num_usable_blocks}"
            )
        if (
            request.output_token_ids is not None
            and len(request.output_token_ids) < request.max_tokens
        ):
            raise ValueError(
                f"output_token_ids has {len(request.output_token_ids)} ids, "
                f"fewer than max_tokens ({request.max_tokens})"
            )
        state = RequestState(request, self.config.vocab_size)
        self._requests[request_id] = state
        self._scheduler.add(state)

    def abort_request(self, request_id: str) -> None:
        """Drop a request wherever it is and free its blocks (cached ones stay findable in
        the free queue). Also releases a finished request's retained blocks. Unknown or
        finished ids are ignored, as in vLLM (aborts race with completion)."""
        state = self._requests.pop(request_id, None)
        if state is None:
            self._scheduler.release_retained(request_id)
            return
        self._scheduler.abort(state)
        self._stats.num_requests_aborted += 1

    def release_retained(self, request_id: str) -> bool:
        """Free the blocks a finished ``retain_blocks`` request still holds. Returns False
        if nothing was retained under that id. Releasing an unfinished request's id makes it
        free its blocks normally when it finishes."""
        state = self._requests.get(request_id)
        if state is not None:
            state.retain_blocks = False
            return False
        return self._scheduler.release_retained(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def peek_prefix_hit(self, token_ids: list[int]) -> int:
        """Tokens of this prompt that would hit the prefix cache now (no side effects)."""
        return self._kv.peek_prefix_hit(token_ids)

    # ---- stepping -----------------------------------------------------------------------

    def step(self) -> StepResult:
        scheduler = self._scheduler
        out = scheduler.schedule()
        preempted_ids = [r.request_id for r in out.preempted]
        if not out.scheduled:
            return StepResult(0.0, [], 0, 0, preempted_ids)
        duration = self._step_model.step_time(out.batch)
        update = scheduler.update_from_step(out)
        stats = self._stats
        stats.num_steps += 1
        stats.busy_time_s += duration
        stats.generation_tokens += len(update.produced)
        outputs: list[RequestOutput] = []
        for request, token in update.produced:
            if request.num_output_tokens == 1:
                stats.prompt_tokens += request.num_prompt_tokens
            finished = request.status is RequestStatus.FINISHED
            outputs.append(
                RequestOutput(
                    request.request_id,
                    [token],
                    finished,
                    request.num_prompt_tokens,
                    request.num_cached_tokens,
                    request.num_preemptions,
                    request.num_output_tokens,
                )
            )
        if update.finished:
            stats.num_requests_finished += len(update.finished)
            requests = self._requests
            for request in update.finished:
                del requests[request.request_id]
        return StepResult(
            duration, outputs, out.batch.num_tokens, out.batch.num_requests, preempted_ids
        )

    # ---- observation --------------------------------------------------------------------

    @property
    def stats(self) -> EngineStats:
        """A snapshot: counters since start, gauges as of now."""
        scheduler = self._scheduler
        pool = self._kv.pool
        return dataclasses.replace(
            self._stats,
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            num_retained=len(scheduler.retained),
            kv_cache_usage=pool.usage,
            num_free_blocks=pool.num_free_blocks,
            num_block_evictions=pool.num_evictions,
        )

    def request_status(self, request_id: str) -> RequestStatus | None:
        """Where an unfinished request is (None once finished, aborted or unknown)."""
        state = self._requests.get(request_id)
        return state.status if state is not None else None

    def num_blocks_of(self, request_id: str) -> int:
        """Blocks currently referenced on behalf of a request (live or retained)."""
        state = self._requests.get(request_id) or self._scheduler.retained.get(request_id)
        if state is None or state.kv_blocks is None:
            return 0
        return len(state.kv_blocks)

    def check_invariants(self) -> None:
        """Consistency of the block books against the requests (tests, debugging)."""
        pool = self._kv.pool
        pool.check_consistency()
        refs = [0] * pool.num_blocks
        holders = [*self._scheduler.running, *self._scheduler.retained.values()]
        for state in self._requests.values():
            if state.status is not RequestStatus.RUNNING and state.kv_blocks is not None:
                raise AssertionError(f"{state} holds blocks but is not running")
        for state in holders:
            for block in state.kv_blocks or ():
                refs[block.block_id] += 1
        for block in pool.blocks[1:]:
            if refs[block.block_id] != block.ref_cnt:
                raise AssertionError(f"{block}: {refs[block.block_id]} owners")
        if pool.num_free_blocks + pool.num_referenced_blocks + 1 != pool.num_blocks:
            raise AssertionError("free + referenced + null != num_blocks")
        for state in self._scheduler.waiting:
            hit = len(self._kv.find_cached_prefix(state)) * self.config.block_size
            if hit != self._kv.peek_prefix_hit(state.token_ids):
                raise AssertionError(f"{state}: remembered prefix hit {hit} is stale")
