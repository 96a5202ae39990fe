"""The policy's knobs, each default with the reason it was chosen.

One frozen object so that a running scheduler can never see its parameters change under it;
the sidecar builds it from its settings, the simulator from a sweep point.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PolicyConfig(BaseModel):
    """Parameters of :class:`~thunder_middleware.policy.ProgramScheduler`.

    ``cost_aware=False`` gives the published ThunderAgent policy exactly (DESIGN section 3);
    the ``cost_*`` knobs only matter when it is on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tick_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="Period of the thrashing check (the published setting, Delta t = 5 s): "
        "events already trigger checks, the tick only catches decay and expiry.",
    )
    decay_base: float = Field(
        default=2.0,
        ge=1.0,
        description="x in f(t) = x^-t for acting programs (published x = 2, t in seconds): "
        "exponential is the only decay consistent with memoryless tool times; 1.0 disables it.",
    )
    lambda_min: float = Field(
        default=1.0,
        gt=0,
        description="Low watermark: restores happen while demand < lambda_min * C "
        "(published 1.0: shared system prompts leave real slack under the nominal capacity).",
    )
    lambda_max: float = Field(
        default=1.0,
        gt=0,
        description="High watermark: pauses happen while demand > lambda_max * C (published 1.0).",
    )
    starvation_bound_s: float = Field(
        default=300.0,
        gt=0,
        description="A request waiting at the gate longer than this is restored regardless "
        "(cost-aware: first in the restore order): ~10 agent steps of 10-30 s. At 6x "
        "overload a fair rotation alone makes programs wait ~100 s, so a shorter bound "
        "turns the safety net into constant forced overcommit (measured in the simulator).",
    )
    idle_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="An acting program without a request for this long is expired: longer "
        "than the longest tool in the workloads (model-as-a-tool up to 250 s), so only "
        "crashed agents are reaped.",
    )
    default_chars_per_token: float = Field(
        default=4.0,
        gt=0,
        description="Characters per token before the first usage is seen (English BPE "
        "tokenizers average about 4).",
    )
    chars_per_token_alpha: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="EMA weight of each observed prompt's chars/token: slow, since the ratio "
        "is a property of the tokenizer and the traffic mix, not of one request.",
    )
    sharing_alpha: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="EMA weight of each kv_usage observation in the shared-prefix factor: "
        "the gauge is noisy (chunked prefill, preempted requests) so one sample must not "
        "swing the limit.",
    )
    min_sharing_factor: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Floor of the shared-prefix correction (engine-held / sum of c): a gauge "
        "read mid-prefill under-reports, and over-trusting it would overcommit.",
    )
    cost_aware: bool = Field(
        default=True,
        description="Pause only when the recomputation a pause saves costs more than the wait "
        "it imposes (see cost.py); False = the published policy exactly.",
    )
    cost_gain: float = Field(
        default=1.0,
        ge=0,
        description="Multiplier on the overcommit allowance of the cost model; 1.0 is the "
        "break-even point of the model, 0 gives the published limits.",
    )
    cost_max_overcommit: float = Field(
        default=4.0,
        ge=1.0,
        description="Cap on lambda_eff / lambda_max: estimates from a few samples can be wrong, "
        "and beyond 4x the engine's LRU would thrash every acting program anyway.",
    )
    cost_min_samples: int = Field(
        default=3,
        ge=1,
        description="Calls observed on a backend before its learned prefill rate is trusted: "
        "until then the backend behaves exactly like the published policy.",
    )
    attention_context_tokens: float = Field(
        default=28_000.0,
        gt=0,
        description="Context length at which attention FLOPs equal the linear FLOPs per "
        "prefilled token (2*params / (4*layers*d_model): about 28k for 8B models); gives "
        "the c^2 term of the re-prefill cost.",
    )
    rate_alpha: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="EMA weight of each call in the learned prefill/decode rates: follows load "
        "changes within a few calls without jumping on one outlier.",
    )
    duration_alpha: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="EMA weight of each observed reasoning and tool duration (the cost model's "
        "step cycle): tool times are heavy-tailed, so average over ~10 steps.",
    )
    decay_tool_halflives: float = Field(
        default=1.5,
        gt=0,
        description="Cost-aware: half-life of f(t) in units of the learned mean tool time "
        "(x = 2^(1 / (k * T))), never decaying faster than decay_base. 1.5 keeps the memory "
        "of a typical tool call until it returns (the simulator's SWE-agent shape, mean tool "
        "2.6 s, did best near x = 1.2, i.e. k ~ 1.5).",
    )
    default_tool_s: float = Field(
        default=5.0,
        gt=0,
        description="Mean tool time before any is observed (middle of the 0.5-10 s SWE shape).",
    )
    default_reasoning_s: float = Field(
        default=5.0,
        gt=0,
        description="Mean reasoning time before any is observed (a few hundred output tokens "
        "at tens of ms per token under batching).",
    )

    self_check: bool = Field(
        default=True,
        description="Measure gating against pass-through online and run whichever gives the "
        "agents' LLM side the lower latency (self_check.py); False = always gate.",
    )
    self_check_margin: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Gating must have a latency this much lower than pass-through to become "
        "the main mode (pass-through, which cannot harm, only has to tie): hysteresis "
        "against epoch-to-epoch noise.",
    )
    self_check_min_gain: float = Field(
        default=0.05,
        ge=0,
        description="In pass-through, gating is explored only when re-prefill of lost own "
        "context accounts for at least this share of an agent's step (LLM side and tool).",
    )
    self_check_min_calls: int = Field(
        default=24,
        ge=4,
        description="Fewest completed calls in an epoch (otherwise one call per program).",
    )
    self_check_max_backoff: int = Field(
        default=16,
        ge=1,
        description="Most main-mode epochs between two explorations once the main mode "
        "keeps winning: bounds what exploring costs and how long a changed workload waits.",
    )

    @model_validator(mode="after")
    def _watermarks_ordered(self) -> PolicyConfig:
        """Hysteresis needs lambda_min <= lambda_max, else restores and pauses would ping-pong."""
        if self.lambda_min > self.lambda_max:
            raise ValueError("lambda_min must be <= lambda_max")
        return self
