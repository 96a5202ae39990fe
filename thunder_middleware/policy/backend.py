"""One backend as the policy sees it: capacity, health, committed demand, learned speeds.

Watermarks live here because they combine three things: the configured lambdas, the cost
model's overcommit (lambda_eff) and the shared-prefix correction from the engine's own KV
usage gauge.
"""

from __future__ import annotations

from thunder_middleware.policy.config import PolicyConfig
from thunder_middleware.policy.cost import CostInputs, effective_lambda
from thunder_middleware.policy.demand import BackendDemand
from thunder_middleware.policy.estimators import Ema, EngineRates


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
        "program_count",
        "rates",
        "sharing",
    )

    def __init__(self, name: str, capacity: int, config: PolicyConfig, now: float) -> None:
        self.name = name
        self.capacity = capacity
        self.healthy = True
        self.kv_usage: float | None = None
        self._config = config
        self.demand = BackendDemand(config.decay_base, now)
        self.rates = EngineRates(config.rate_alpha, config.attention_context_tokens)
        self.sharing = Ema(1.0, config.sharing_alpha)
        self.lambda_eff = config.lambda_max
        self.c_total = 0.0  # sum of c over bound programs (mean context for the cost model)
        self.program_count = 0
        self._below_key: tuple[int, float, float, int] | None = None
        self._below_at = float("-inf")

    # --- demand in watermark units -----------------------------------------------------
    def committed(self, now: float) -> float:
        """Committed demand corrected for shared prefixes (what the watermarks compare)."""
        return self.sharing.value * self.demand.raw(now)

    @property
    def high_watermark(self) -> float:
        return self.lambda_eff * self.capacity

    @property
    def low_watermark(self) -> float:
        # lambda_min shifted by the cost model's overcommit, so the hysteresis keeps its width
        shift = self.lambda_eff - self._config.lambda_max
        return (self._config.lambda_min + shift) * self.capacity

    def room_raw(self, now: float) -> float:
        """Uncorrected tokens that still fit under the high watermark (may be negative)."""
        return (self.high_watermark - self.committed(now)) / self.sharing.value

    def below_low_from(self) -> float:
        """Earliest time the committed demand can be under the low watermark by decay alone.

        Cached until the demand, the watermark or the sharing factor changes: the restore
        pass after every event skips a backend in O(1) until then, instead of re-evaluating
        the decaying sum of every backend on every event.
        """
        key = (self.demand.version, self.lambda_eff, self.sharing.value, self.capacity)
        if key != self._below_key:
            reasoning = max(self.demand.reasoning_sum, 0.0)
            target = self.low_watermark / self.sharing.value - reasoning
            # a hair early: the exact comparison is made when the time comes
            self._below_at = self.demand.acting.time_below(target) - 1e-6
            self._below_key = key
        return self._below_at

    def over(self, now: float) -> bool:
        return self.committed(now) > self.high_watermark

    # --- learning ------------------------------------------------------------------------
    def observe_kv_usage(self, kv_usage: float, held_reasoning: float, held_count: int) -> None:
        """Update the shared-prefix factor from the engine's gauge.

        Only in-flight requests hold referenced blocks (cached free blocks count as free in
        vLLM's gauge), so the gauge is compared with the c of the reasoning programs. With
        fewer than two of them nothing can be shared and the sample says nothing.
        """
        self.kv_usage = kv_usage
        if held_count < 2 or held_reasoning <= 0.0 or self.capacity <= 0:
            return
        ratio = kv_usage * self.capacity / held_reasoning
        self.sharing.update(min(max(ratio, self._config.min_sharing_factor), 1.0))

    def refresh_lambda(self, reasoning_s: float, tool_s: float, fallback_context: float) -> None:
        """Recompute lambda_eff from the cost model (see cost.py); lambda_max when unsure."""
        config = self._config
        self.lambda_eff = config.lambda_max
        if not config.cost_aware or self.rates.samples < config.cost_min_samples:
            return
        mean_context = (
            self.c_total / self.program_count if self.program_count else fallback_context
        )
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
