"""What the policy learns from traffic: tokens per character, engine speeds, step shape.

All estimators are exponentially weighted so they follow load changes, and all are fed only
from what the runtime reports (usage and CallTiming), never from a clock of their own.
"""

from __future__ import annotations

from thunder_middleware.policy.types import CallTiming, Usage


class Ema:
    """Exponentially weighted mean with a prior that the first sample replaces."""

    __slots__ = ("alpha", "samples", "value")

    def __init__(self, prior: float, alpha: float) -> None:
        self.value = prior
        self.alpha = alpha
        self.samples = 0

    def update(self, sample: float) -> None:
        self.value = (
            sample if self.samples == 0 else self.value + self.alpha * (sample - self.value)
        )
        self.samples += 1


class CharsPerToken:
    """Learned characters per token, to estimate c before a program's first usage arrives."""

    __slots__ = ("_ema",)

    def __init__(self, prior: float, alpha: float) -> None:
        self._ema = Ema(prior, alpha)

    @property
    def value(self) -> float:
        return self._ema.value

    def observe(self, prompt_chars: int, prompt_tokens: int) -> None:
        # tiny prompts are dominated by the chat template's tokens: they would bias the ratio
        if prompt_chars >= 64 and prompt_tokens >= 16:
            self._ema.update(min(max(prompt_chars / prompt_tokens, 0.5), 32.0))

    def tokens(self, prompt_chars: int) -> float:
        return prompt_chars / self._ema.value


class StepShape:
    """What the fleet's steps look like, fleet-wide: the cost model's R, T, c and output.

    Reasoning time is dispatch -> done, tool time done -> next request of the same program
    (the client's tool runs in between; a paused program's wait is not part of it).
    """

    __slots__ = ("completion_tokens", "context_tokens", "reasoning_s", "tool_s")

    def __init__(self, reasoning_prior_s: float, tool_prior_s: float, alpha: float) -> None:
        self.reasoning_s = Ema(reasoning_prior_s, alpha)
        self.tool_s = Ema(tool_prior_s, alpha)
        self.context_tokens = Ema(0.0, alpha)
        self.completion_tokens = Ema(0.0, alpha)

    def observe_call(self, usage: Usage, seconds: float) -> None:
        self.reasoning_s.update(max(seconds, 0.0))
        self.context_tokens.update(float(usage.prompt_tokens + usage.completion_tokens))
        self.completion_tokens.update(float(usage.completion_tokens))

    def observe_tool(self, seconds: float) -> None:
        self.tool_s.update(max(seconds, 0.0))


def prefill_work(uncached: float, cached: float, attention_context: float) -> float:
    """Prefill cost in linear-token units: each new token also attends to everything before.

    Token i of a prompt costs (1 + i / A) linear units, A the context where attention FLOPs
    equal the weight FLOPs; summed over tokens cached..cached+uncached this is the closed form
    below. It is what makes re-prefilling a context of c tokens cost ~ c + c^2 / (2A).
    """
    return uncached * (1.0 + (cached + uncached / 2.0) / attention_context)


class EngineRates:
    """One backend's prefill and decode speed, learned from usage + CallTiming.

    Model: call time = work / P + completion / D (P in linear-token units per second, see
    :func:`prefill_work`). A streaming call separates the two (first token = prefill); a
    non-streaming call gives one equation in both unknowns, so the pair is fitted by
    exponentially forgotten least squares over all calls. Rates are per request, i.e. they
    include the batching the engine does under the current load, which is exactly the cost
    a re-prefill imposes at that load.
    """

    __slots__ = ("_forget", "_r0", "_r1", "_s00", "_s01", "_s11", "attention_context", "samples")

    def __init__(self, alpha: float, attention_context: float) -> None:
        self._forget = 1.0 - alpha
        self._s00 = self._s01 = self._s11 = 0.0
        self._r0 = self._r1 = 0.0
        self.attention_context = attention_context
        self.samples = 0

    def _add(self, x0: float, x1: float, y: float) -> None:
        # scale rows to unit norm so long calls do not drown short ones
        norm = (x0 * x0 + x1 * x1) ** 0.5
        if norm <= 0.0 or y <= 0.0:
            return
        x0, x1, y = x0 / norm, x1 / norm, y / norm
        f = self._forget
        self._s00 = f * self._s00 + x0 * x0
        self._s01 = f * self._s01 + x0 * x1
        self._s11 = f * self._s11 + x1 * x1
        self._r0 = f * self._r0 + x0 * y
        self._r1 = f * self._r1 + x1 * y

    def observe(self, usage: Usage, timing: CallTiming) -> None:
        uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
        work = prefill_work(uncached, usage.cached_tokens, self.attention_context)
        completion = max(usage.completion_tokens, 0)
        total = timing.total_s
        if total <= 0.0:
            return
        first = timing.first_token_s
        if 0.0 < first < total and completion > 1:
            self._add(work, 0.0, first)
            self._add(0.0, completion - 1.0, total - first)
        else:
            self._add(work, float(completion), total)
        self.samples += 1

    def _solution(self) -> tuple[float, float]:
        """Seconds per prefill work unit and per decoded token (0.0 = unknown)."""
        det = self._s00 * self._s11 - self._s01 * self._s01
        scale = self._s00 * self._s11
        if scale > 0.0 and det > 1e-9 * scale:
            t0 = (self._r0 * self._s11 - self._r1 * self._s01) / det
            t1 = (self._r1 * self._s00 - self._r0 * self._s01) / det
            if t0 > 0.0 and t1 > 0.0:
                return t0, t1
        # degenerate (all calls in one proportion) or a negative component: attribute each
        # unknown on its own, an upper bound on its cost
        t0 = self._r0 / self._s00 if self._s00 > 0.0 else 0.0
        t1 = self._r1 / self._s11 if self._s11 > 0.0 else 0.0
        return max(t0, 0.0), max(t1, 0.0)

    @property
    def prefill_rate(self) -> float | None:
        """Linear-token work units per second, None before any call was seen."""
        t0, _ = self._solution()
        return 1.0 / t0 if t0 > 0.0 else None

    @property
    def decode_rate(self) -> float | None:
        """Output tokens per second of one request under the current batching."""
        _, t1 = self._solution()
        return 1.0 / t1 if t1 > 0.0 else None

    def recompute_s(self, context: float) -> float | None:
        """Seconds to re-prefill a whole context of ``context`` tokens, None if unknown."""
        rate = self.prefill_rate
        if rate is None:
            return None
        return prefill_work(context, 0.0, self.attention_context) / rate
