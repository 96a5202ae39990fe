"""Small drivers shared by the engine-core tests."""

from __future__ import annotations

import heapq

from thunder_middleware.twin import EngineConfig, EngineCore, EngineRequest, StepResult


def make_engine(
    num_blocks: int,
    block_size: int = 4,
    max_num_batched_tokens: int = 64,
    max_num_seqs: int = 256,
    max_model_len: int = 4096,
) -> EngineCore:
    return EngineCore(
        EngineConfig(
            num_blocks=num_blocks,
            block_size=block_size,
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
        )
    )


def drain(engine: EngineCore, max_steps: int = 100_000) -> tuple[dict[str, list[int]],
                                                                  list[StepResult]]:
    """Step until idle, checking the block books after every step; returns the tokens each
    request produced and the step results."""
    tokens: dict[str, list[int]] = {}
    results: list[StepResult] = []
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            return tokens, results
        result = engine.step()
        engine.check_invariants()
        results.append(result)
        for output in result.outputs:
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    raise AssertionError("engine did not drain")


def prompt(seed: int, length: int) -> list[int]:
    """Distinct-looking token ids for a program (seed) that never collide across seeds."""
    return [seed * 100_000 + i + 1 for i in range(length)]


def closed_loop_hit_rate(
    num_programs: int,
    num_blocks: int,
    turns: int = 6,
    block_size: int = 16,
    system_tokens: int = 64,
    observation_tokens: int = 40,
    output_tokens: int = 20,
    tool_s: float = 0.5,
) -> float:
    """Multi-turn programs in a closed loop on a virtual clock: each turn's prompt is the
    previous prompt + its output + an observation; between turns the program "acts" for
    ``tool_s`` x (1, 2 or 3) seconds. Returns the prefix-cache hit rate of the turns after
    the first (cached prompt tokens / prompt tokens)."""
    engine = make_engine(
        num_blocks=num_blocks,
        block_size=block_size,
        max_num_batched_tokens=2048,
        max_model_len=1 << 17,
    )
    system = prompt(0, system_tokens)
    history = {p: system + prompt(p + 1, observation_tokens) for p in range(num_programs)}
    turn = dict.fromkeys(history, 0)
    ready: list[tuple[float, int]] = [(0.0, p) for p in history]  # (time, program) heap
    in_flight: dict[str, int] = {}
    produced: dict[int, list[int]] = {}
    now = 0.0
    queries = hits = 0
    while ready or in_flight:
        while ready and ready[0][0] <= now:
            _, p = heapq.heappop(ready)
            request_id = f"p{p}-t{turn[p]}"
            in_flight[request_id] = p
            produced[p] = []
            engine.add_request(EngineRequest(request_id, history[p], output_tokens))
        if not in_flight:
            now = ready[0][0]
            continue
        result = engine.step()
        now += result.duration_s
        for output in result.outputs:
            p = in_flight[output.request_id]
            produced[p].extend(output.new_token_ids)
            if not output.finished:
                continue
            del in_flight[output.request_id]
            if turn[p] > 0:
                queries += output.num_prompt_tokens
                hits += output.num_cached_tokens
            observation = prompt(1000 + p * 50 + turn[p], observation_tokens)
            history[p] = history[p] + produced[p] + observation
            turn[p] += 1
            if turn[p] < turns:
                heapq.heappush(ready, (now + tool_s * (1 + p % 3), p))
    return hits / queries
