"""When is a pause worth it? The adaptive overcommit limit lambda_eff (issue 3, item 2).

The published policy pauses whenever demand exceeds lambda_max * C. That is right when
re-prefilling a context is expensive (long contexts, a saturated GPU), and wrong when it is
cheap: a paused program makes no progress at all while it waits, whereas a program whose
cache was evicted only pays one re-prefill when it comes back. On real vLLM (CPU build,
small model) a pause-heavy policy gained hit rate and lost throughput; plain vLLM's
"overcommit and recompute" was the better deal there.

Model (one backend, fluid approximation, all quantities learned online):

- ``c``: mean context of the programs on the backend; ``K = lambda_max * C / c`` programs
  fit with their caches kept.
- ``R``, ``T``: mean reasoning and tool (acting) time of a step, observed by the scheduler
  (dispatch -> done, done -> next request).
- ``rho = work(c) / P``: seconds to re-prefill a whole context, with ``P`` the backend's
  learned prefill rate and ``work(c) = c + c^2 / 2A`` the attention-aware cost
  (:func:`~thunder_middleware.policy.estimators.prefill_work`).

Admit ``e`` programs beyond what fits (``n = K + e``). With the memory deficit rotating
through the programs, a fraction ``m = e / n`` of steps miss their cache and re-prefill:
the engine spends ``u = e * rho / (R + T)`` of its time recomputing, which stretches every
reasoning phase by ``1 / (1 - u)`` (the prefill chunks share the batch), and each missing
step also waits its own re-prefill ``rho``. Steps per second:

    S(e) = (K + e) / (R / (1 - u) + T + m * rho)

``S`` is what pausing trades away: pausing the ``e`` extra programs gives ``S(0) = K/(R+T)``.
The derivative at e = 0 is positive exactly when ``rho * (n_r + 1) < R + T`` with
``n_r = K R / (R + T)`` programs reasoning at a time: overcommit pays while one re-prefill,
times the programs it stalls (the reasoning batch plus the one that missed), costs less
than one step cycle. Long tools, short contexts and fast prefill make it pay (get out of the
way, like plain vLLM); long contexts on a busy GPU do not (pause, like the published
policy). The scheduler picks ``e* = argmax S(e)`` over a fixed grid and uses

    lambda_eff = lambda_max + cost_gain * e* * c / C   (capped at cost_max_overcommit)

as the high watermark, and lambda_min shifted by the same amount as the low one, so the
hysteresis window keeps its width. The overcommit is only ever of *acting* programs' cached
contexts: the requests in flight stay under lambda_max * C whatever lambda_eff says
(backend.py), since beyond it the engine preempts running requests mid-decode, a cost the
model above does not price. Nothing is learned yet (fewer than ``cost_min_samples``
calls): ``lambda_eff = lambda_max``, the published policy. The grid search is deterministic
and costs ~50 float operations per backend per tick.

The same switch (``cost_aware``) turns on four refinements that price waiting against
recomputation in the other decisions, each found in the virtual-time simulator:

- the decay's half-life follows the learned mean tool time (``decay_tool_halflives``): a
  program that will be back in a few seconds keeps its memory, a long tool gives it away;
- an arrival that does not fit waits at the gate before any in-flight program is marked (a
  mark frees nothing until that call ends, while the engine must hold everyone now);
- a starving request goes to the head of the restore order rather than being forced in;
- reasoning programs reserve the learned mean output they are about to decode.
"""

from __future__ import annotations

from dataclasses import dataclass

_GRID_POINTS = 48


@dataclass(frozen=True, slots=True)
class CostInputs:
    """What the model needs for one backend, all learned or measured."""

    capacity_tokens: float
    lambda_max: float
    mean_context: float
    recompute_s: float  # rho: re-prefill of a whole mean context
    reasoning_s: float  # R
    tool_s: float  # T


def steps_per_second(inputs: CostInputs, extra_programs: float) -> float:
    """S(e) of the module docstring; 0.0 where the recompute load would saturate the engine."""
    fit = inputs.lambda_max * inputs.capacity_tokens / inputs.mean_context
    n = fit + extra_programs
    if n <= 0.0:
        return 0.0
    cycle = inputs.reasoning_s + inputs.tool_s
    load = extra_programs * inputs.recompute_s / cycle
    if load >= 1.0:
        return 0.0
    miss = extra_programs / n
    step_time = inputs.reasoning_s / (1.0 - load) + inputs.tool_s + miss * inputs.recompute_s
    return n / step_time


def best_overcommit_programs(inputs: CostInputs, max_factor: float) -> float:
    """argmax_e S(e) on a grid from 0 to (max_factor - 1) * K programs (0 = do not overcommit)."""
    if inputs.mean_context <= 0.0 or inputs.capacity_tokens <= 0.0:
        return 0.0
    if inputs.recompute_s <= 0.0:
        # free recomputation: nothing is gained by pausing
        return (max_factor - 1.0) * inputs.lambda_max * inputs.capacity_tokens / inputs.mean_context
    fit = inputs.lambda_max * inputs.capacity_tokens / inputs.mean_context
    top = (max_factor - 1.0) * fit
    if top <= 0.0:
        return 0.0
    best_e, best_s = 0.0, steps_per_second(inputs, 0.0)
    for i in range(1, _GRID_POINTS + 1):
        e = top * i / _GRID_POINTS
        s = steps_per_second(inputs, e)
        if s > best_s * (1.0 + 1e-9):
            best_e, best_s = e, s
    return best_e


def effective_lambda(inputs: CostInputs, gain: float, max_factor: float) -> float:
    """lambda_eff for the high watermark (lambda_max when overcommit does not pay)."""
    extra = best_overcommit_programs(inputs, max_factor)
    lam = inputs.lambda_max + gain * extra * inputs.mean_context / inputs.capacity_tokens
    return min(lam, inputs.lambda_max * max_factor)
