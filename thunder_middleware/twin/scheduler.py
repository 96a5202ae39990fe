"""Continuous batching with chunked prefill and recompute preemption, as vLLM v1's FCFS
scheduler does it. This is the policy; block accounting is in ``kv_cache_manager.py``.

Each step:
1. running requests first, in admission order: each gets what it still lacks (one decode
   token, or the next prefill chunk), within the token budget. When one cannot get a block,
   the most recently admitted running request is preempted (popped from the end of the
   running list, blocks freed, reset to recompute everything including the tokens it already
   generated, put at the FRONT of the waiting queue), until the allocation fits or the
   request had to preempt itself;
2. then, unless something was preempted this step, waiting requests in FCFS order while the
   budget, ``max_num_seqs`` and the blocks allow; a waiting request that does not fit blocks
   the queue (no skipping ahead). Its prefix-cache hit is looked up at that moment.

A request's token is produced in the step whose chunk reaches the end of its known tokens,
so the first token comes in the step that completes the prefill.

Simplifications against vLLM: FCFS only (no priority policy), no ``long_prefill_token_threshold``,
no async scheduling / output placeholders, no encoder inputs, no structured-output waits, and
prompts never exceed ``max_model_len`` (the engine rejects them at admission).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from thunder_middleware.twin.kv_cache_manager import KVCacheManager
from thunder_middleware.twin.request import RequestState, RequestStatus
from thunder_middleware.twin.roofline import BatchShape
from thunder_middleware.twin.stats import EngineStats


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[tuple[RequestState, int]] = field(default_factory=list)
    preempted: list[RequestState] = field(default_factory=list)
    batch: BatchShape = field(default_factory=BatchShape)


@dataclass(slots=True)
class StepUpdate:
    """Tokens produced by one step, and the requests that finished with them."""

    produced: list[tuple[RequestState, int]] = field(default_factory=list)
    finished: list[RequestState] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        kv: KVCacheManager,
        stats: EngineStats,
        max_num_batched_tokens: int,
        max_num_seqs: int,
    ) -> None:
        if max_num_batched_tokens < 1 or max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")
        self.kv = kv
        self.stats = stats
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[RequestState] = deque()
        self.running: list[RequestState] = []
        # finished requests whose blocks stay referenced (retain_blocks), by id
        self.retained: dict[str, RequestState] = {}

    # ---- queue changes from outside -------------------------------------------------------

    def add(self, request: RequestState) -> None:
        self.waiting.append(request)

    def abort(self, request: RequestState) -> None:
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
            self.waiting.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.ABORTED

    def release_retained(self, request_id: str) -> bool:
        request = self.retained.pop(request_id, None)
        if request is None:
            return False
        self.kv.free(request)
        return True

    # ---- one step ---------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        scheduled = out.scheduled
        batch = out.batch
        kv = self.kv
        allocate = kv.allocate_slots
        running = self.running
        budget = self.max_num_batched_tokens

        index = 0
        while index < len(running) and budget > 0:
            request = running[index]
            computed = request.num_computed_tokens
            num_new = len(request.token_ids) - computed
            if num_new > budget:
                num_new = budget
            fits = allocate(request, num_new, computed)
            while not fits:
                victim = running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    break
                fits = allocate(request, num_new, computed)
            if not fits:
                break
            scheduled.append((request, num_new))
            batch.add(computed, num_new, computed + num_new == len(request.token_ids))
            budget -= num_new
            index += 1

        if not out.preempted:
            self._admit_waiting(out, budget)

        for request, num_new in scheduled:
            request.num_computed_tokens += num_new
        return out

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        kv = self.kv
        stats = self.stats
        waiting = self.waiting
        running = self.running
        block_size = kv.block_size
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            request = waiting[0]
            hit_blocks = kv.find_cached_prefix(request)
            num_hit = len(hit_blocks) * block_size
            num_new = len(request.token_ids) - num_hit
            if num_new > budget:
                num_new = budget
            if not kv.allocate_slots(request, num_new, num_hit, hit_blocks):
                break
            waiting.popleft()
            stats.prefix_cache_queries += len(request.token_ids)
            stats.prefix_cache_hits += num_hit
            if request.num_preemptions:
                stats.prefix_cache_queries_preempted += len(request.token_ids)
                stats.prefix_cache_hits_preempted += num_hit
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit
            request.num_computed_tokens = num_hit
            request.status = RequestStatus.RUNNING
            running.append(request)
            out.scheduled.append((request, num_new))
            out.batch.add(num_hit, num_new, num_hit + num_new == len(request.token_ids))
            budget -= num_new

    def _preempt(self, request: RequestState) -> None:
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.waiting.appendleft(request)
        self.stats.num_preemptions += 1

    def update_from_step(self, out: SchedulerOutput) -> StepUpdate:
        """After the step ran: every request whose KV caught up with its tokens produces
        its next token; those that reached ``max_tokens`` finish and give back (or retain)
        their blocks."""
        update = StepUpdate()
        produced = update.produced
        finished = update.finished
        for request, _ in out.scheduled:
            if request.status is not RequestStatus.RUNNING:
                continue
            if request.num_computed_tokens < len(request.token_ids):
                continue  # a prefill chunk that has not reached the end yet
            produced.append((request, request.append_output_token()))
            if request.num_output_tokens >= request.max_tokens:
                finished.append(request)
        if finished:
            for request in finished:
                request.status = RequestStatus.FINISHED
                if request.retain_blocks:
                    self.retained[request.request_id] = request
                else:
                    self.kv.free(request)
            self.running = [r for r in self.running if r.status is RequestStatus.RUNNING]
        return update
