"""One backend as the policy sees it: capacity, health, committed demand, learned speeds.

Watermarks live here because they combine three things: the configured lambdas, the cost
model's overcommit (lambda_eff) and the shared-prefix correction.

Shared prefixes: programs of one fleet share a system prompt, which the engine holds once.
The correction learns that prefix in tokens from the engine's own report: the cached tokens
of a program's *first* call (nothing of its own can be cached yet, so every hit is a prefix
some other program left). Demand then counts one copy of the prefix plus each program's own
part. An earlier version scaled demand by kv_usage / sum(c); the gauge is read while
requests queue inside the engine, under-reports, and the scale-down overcommitted, which
made the engine queue more: a feedback loop the simulator found. The gauge is now only shown.
"""

from __future__ import annotations

import math

from thunder_middleware.policy.config import PolicyConfig
from thunder_middleware.policy.cost import CostInputs, effective_lambda
from thunder_middleware.policy.demand import BackendDemand
from thunder_middleware.policy.estimators import Ema, EngineRates

# room of a pass-through backend before what it holds is subtracted: finite, so that
# placement by most room still spreads programs over backends
_PASS_ROOM = 1e15


class BackendState:
    """Mutable per-backend record owned by the scheduler."""

    __slots__ = (
        "_below_at",
        "_below_key",
        "_config",
        "c_total",
        "capacity",
        "demand",
        "healthy",
        "kv_usage",
        "lambda_eff",
        "name",
        "passthrough",
        "program_count",
        "rates",
        "shared_prefix",
    )

    def __init__(self, name: str, capacity: int, config: PolicyConfig, now: float) -> None:
        self.name = name
        self.capacity = capacity
        self.healthy = True
        # pass-through (self_check.py): no watermark applies, restores go where least is held
        self.passthrough = False
        self.kv_usage: float | None = None
        self._config = config
        self.demand = BackendDemand(config.decay_base, now)
        self.rates = EngineRates(config.rate_alpha, config.attention_context_tokens)
        self.shared_prefix = Ema(0.0, config.sharing_alpha)
        self.lambda_eff = config.lambda_max
        self.c_total = 0.0  # sum of c over bound programs (mean context for the cost model)
        self.program_count = 0
        self._below_key: tuple[int, float, float, int, float] | None = None
        self._below_at = float("-inf")

    # --- demand in watermark units -----------------------------------------------------
    @property
    def shared(self) -> float:
        return self.shared_prefix.value

    def committed(self, now: float) -> float:
        """Committed demand corrected for the shared prefix (what the watermarks compare).

        Never above the raw demand (sharing only ever saves memory, even when programs are
        shorter than the learned prefix) and never below min_sharing_factor of it: a prefix
        learned from a few calls must not talk the policy into a large overcommit.
        """
        raw = self.demand.raw(now)
        shared = self.shared
        if not shared:
            return raw
        return self._clamp(self.demand.committed(now, shared), raw)

    def _clamp(self, corrected: float, raw: float) -> float:
        floor = self._config.min_sharing_factor * raw
        return raw if corrected > raw else floor if corrected < floor else corrected

    def occupied(self, now: float) -> float:
        """Committed demand plus what marked programs still hold until their call ends.

        Pauses compare ``committed`` (a marked program is already leaving: counting it would
        pause a second program for the same excess); restores compare ``occupied`` (its
        memory is not free yet: filling it would make the engine preempt).
        """
        demand = self.demand
        held = demand.marked_sum - self.shared * demand.marked_count
        return self.committed(now) + (held if held > 0.0 else 0.0)

    @property
    def high_watermark(self) -> float:
        if self.passthrough:
            return math.inf
        return self.lambda_eff * self.capacity

    @property
    def low_watermark(self) -> float:
        if self.passthrough:
            return math.inf
        # lambda_min shifted by the cost model's overcommit, so the hysteresis keeps its width
        shift = self.lambda_eff - self._config.lambda_max
        return (self._config.lambda_min + shift) * self.capacity

    def reasoning_committed(self) -> float:
        """The part of the committed demand that is in flight now (no decay, no marks)."""
        demand = self.demand
        counted = demand.reasoning_count
        if not counted:
            return 0.0
        shared = self.shared
        corrected = max(demand.reasoning_sum - shared * counted, 0.0) + shared
        return self._clamp(corrected, demand.reasoning_sum)

    @property
    def reasoning_limit(self) -> float:
        """In-flight requests never get more than lambda_max * C, overcommit or not.

        The cost model's overcommit trades cached contexts of *acting* programs for
        throughput; requests in flight beyond the capacity make the engine preempt running
        requests instead, which recomputes them mid-decode (measured: preemptions appear as
        soon as lambda_eff > lambda_max applies to everything).
        """
        if self.passthrough:
            return math.inf
        return self._config.lambda_max * self.capacity

    def over_total(self, now: float) -> bool:
        return self.committed(now) > self.high_watermark

    def over(self, now: float) -> bool:
        return self.over_total(now) or self.reasoning_committed() > self.reasoning_limit

    def room(self, now: float) -> float:
        """Tokens a restore may still add: under the high watermark and the in-flight limit.

        In pass-through every backend has room; what is left of a large constant keeps
        best-fit placement choosing the backend that holds least.
        """
        if self.passthrough:
            return _PASS_ROOM - self.occupied(now)
        demand = self.demand
        held = max(demand.marked_sum - self.shared * demand.marked_count, 0.0)
        total = self.high_watermark - self.occupied(now)
        in_flight = self.reasoning_limit - self.reasoning_committed() - held
        return total if total < in_flight else in_flight

    def below_low_from(self) -> float:
        """Earliest time the occupied demand can be under the low watermark by decay alone.

        Cached until the demand, the watermark or the prefix changes: the restore pass after
        every event skips a backend in O(1) until then, instead of re-evaluating every
        backend's decaying sum on every event. The committed demand is clamped between
        the floor and the raw demand, so the crossing is the earlier of the corrected and
        the raw one (the floor only delays it); early is safe, the exact comparison is made
        when the time comes.
        """
        if self.passthrough:
            return -math.inf
        demand = self.demand
        shared = self.shared
        key = (demand.version, self.lambda_eff, shared, self.capacity, demand.acting.base)
        if key != self._below_key:
            counted = demand.reasoning_count
            fixed = max(demand.reasoning_sum - shared * counted, 0.0)
            fixed += max(demand.marked_sum - shared * demand.marked_count, 0.0)
            if shared and (counted or len(demand.acting)):
                fixed += shared
            corrected_at = demand.acting.time_below(self.low_watermark - fixed, shared)
            raw_fixed = max(demand.reasoning_sum, 0.0) + max(demand.marked_sum, 0.0)
            raw_at = demand.acting.time_below(self.low_watermark - raw_fixed)
            self._below_at = min(corrected_at, raw_at) - 1e-6
            self._below_key = key
        return self._below_at

    # --- learning ------------------------------------------------------------------------
    def observe_first_call(self, cached_tokens: int, prompt_tokens: int) -> None:
        """A program's first call: its cached tokens are a prefix shared with others."""
        self.shared_prefix.update(float(max(min(cached_tokens, prompt_tokens), 0)))

    def refresh_lambda(self, reasoning_s: float, tool_s: float, fallback_context: float) -> None:
        """Recompute lambda_eff from the cost model (see cost.py); lambda_max when unsure."""
        config = self._config
        self.lambda_eff = config.lambda_max
        if not config.cost_aware or self.rates.samples < config.cost_min_samples:
            return
        mean_context = self.c_total / self.program_count if self.program_count else fallback_context
        # the shared prefix stays cached whoever is evicted: only the own part is at stake
        mean_context -= min(self.shared, 0.9 * mean_context)
        if mean_context <= 0.0 or self.capacity <= 0:
            return
        recompute = self.rates.recompute_s(mean_context)
        if recompute is None:
            return
        inputs = CostInputs(
            capacity_tokens=float(self.capacity),
            lambda_max=config.lambda_max,
            mean_context=mean_context,
            recompute_s=recompute,
            reasoning_s=reasoning_s,
            tool_s=tool_s,
        )
        self.lambda_eff = effective_lambda(inputs, config.cost_gain, config.cost_max_overcommit)
