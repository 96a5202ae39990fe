"""Step times and KV capacity from a roofline of a named GPU and model.

A serving step runs every scheduled token through the model once. Its time is bounded by
whichever is slower, moving the bytes or doing the math, plus costs neither captures:

    step = max(FLOPs / achieved tensor FLOP/s, bytes / achieved HBM bandwidth)
           + overheads + tensor-parallel all-reduces

- bytes = weights read once per step (MoE: only the experts some token is routed to, in
  expectation 1 - (1 - k/E)^tokens of them) + the KV of every attended token (each decode
  request reads its whole context; a prefill chunk reads its prefix and itself once) + the
  KV written for the new tokens. The input embedding is a gather, not a stream, so it is
  left out: that is why an 8B model reads about 15 GB per step, not 16.4.
- FLOPs = 2 x active (non-embedding) params x scheduled tokens + the LM head for the
  positions that are sampled (vLLM computes logits only there) + attention: QK^T and AV,
  2 x head_dim FLOPs each per (query, key) pair per query head per layer, over the causal
  context actually attended.
- ``calibrated=True`` (the default) adds what a vLLM-mirroring simulator fitted to real H100
  runs found missing from the ideal roofline (DESIGN.md section 8): 126 us per step
  (scheduler, input preparation, sampling, launch), 32 us per layer (kernel launches and
  small ops that are latency- rather than bandwidth-bound), 4 us per request (per-sequence
  metadata and detokenisation), decode KV reads x1.9 (paged attention does not stream KV
  at copy bandwidth: scattered 16-token blocks, small per-head tiles) and weight loads x1.4
  (GEMMs at small batch do not reach copy bandwidth). ``calibrated=False`` is the bare
  roofline, for the arithmetic.

Tensor parallelism (the MoE profile runs TP 8): every GPU holds 1/tp of every weight matrix
(experts included: vLLM's default shards each expert rather than placing experts) and
max(1, kv_heads/tp) KV heads per layer (replicated when there are fewer KV heads than GPUs),
so weight bytes, linear FLOPs and attention FLOPs divide by tp while per-GPU KV bytes follow
the per-GPU heads. Each layer then all-reduces its attention and its MLP output: 2 ring
all-reduces of tokens x hidden x 2 bytes, each costing a fixed latency plus 2(tp-1)/tp of the
message over NVLink, added after the roofline (not overlapped).

The block count is what vLLM's profiler finds: device memory x gpu_memory_utilization, minus
the per-GPU weights, minus an activation / CUDA-graph reserve, divided by a block's per-GPU
KV bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from thunder_middleware.twin.profiles import GIB, GpuProfile, ModelProfile, get_gpu, get_model

STEP_OVERHEAD_S = 126e-6
LAYER_OVERHEAD_S = 32e-6
REQUEST_OVERHEAD_S = 4e-6
DECODE_KV_READ_FACTOR = 1.9
WEIGHT_READ_FACTOR = 1.4
ACTIVATION_RESERVE_BYTES = int(2.5 * GIB)


@dataclass(slots=True)
class BatchShape:
    """What one step computes, aggregated over its requests (the scheduler fills it in
    O(requests), so the time model is O(1) per step)."""

    num_requests: int = 0
    num_tokens: int = 0  # scheduled (new) tokens
    num_decode_requests: int = 0  # requests scheduled for exactly one token
    decode_context_tokens: int = 0  # sum of contexts attended by decode requests
    prefill_context_tokens: int = 0  # sum of (prefix + chunk) over prefill chunks
    attention_pairs: int = 0  # causal (query, key) pairs over all requests
    num_sampled: int = 0  # requests whose chunk reaches their end (logits computed)

    def add(self, num_computed: int, num_new: int, sampled: bool) -> None:
        """Account one request scheduled for ``num_new`` tokens after ``num_computed``."""
        self.num_requests += 1
        self.num_tokens += num_new
        context = num_computed + num_new
        if num_new == 1:
            self.num_decode_requests += 1
            self.decode_context_tokens += context
            self.attention_pairs += context
        else:
            self.prefill_context_tokens += context
            self.attention_pairs += num_new * num_computed + num_new * (num_new + 1) // 2
        if sampled:
            self.num_sampled += 1


class StepTimeModel(Protocol):
    def step_time(self, batch: BatchShape) -> float:
        """Modeled seconds of one step computing ``batch``."""
        ...


@dataclass(frozen=True, slots=True)
class StepCost:
    """The arithmetic of one step (per GPU), for figures and tests."""

    flops_linear: float
    flops_attention: float
    bytes_weights: float
    bytes_kv_read_decode: float
    bytes_kv_read_prefill: float
    bytes_kv_write: float
    compute_s: float
    memory_s: float
    overhead_s: float
    allreduce_s: float

    @property
    def flops(self) -> float:
        return self.flops_linear + self.flops_attention

    @property
    def bytes(self) -> float:
        return (
            self.bytes_weights
            + self.bytes_kv_read_decode
            + self.bytes_kv_read_prefill
            + self.bytes_kv_write
        )

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s > self.memory_s else "memory"

    @property
    def total_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.overhead_s + self.allreduce_s


class RooflineStepTime:
    """A ``StepTimeModel`` for one GPU profile serving one model profile."""

    def __init__(self, gpu: GpuProfile, model: ModelProfile, *, calibrated: bool = True) -> None:
        self.gpu = gpu
        self.model = model
        self.calibrated = calibrated
        tp = model.tensor_parallel
        dtype = model.dtype_bytes
        streamed = model.total_params - model.embedding_params
        self._dense_weight_bytes = (streamed - model.expert_params) * dtype / tp
        self._expert_weight_bytes = model.expert_params * dtype / tp
        self._expert_fraction = (
            model.experts_per_token / model.num_experts if model.num_experts else 0.0
        )
        body_params = model.active_params - model.embedding_params - model.lm_head_params
        self._flops_per_token = 2.0 * body_params / tp
        self._flops_per_sample = 2.0 * model.lm_head_params / tp
        self._flops_per_pair = 4.0 * model.num_q_heads * model.head_dim * model.num_layers / tp
        self._kv_bytes_per_token = float(model.kv_bytes_per_token_per_gpu)
        self._weight_factor = WEIGHT_READ_FACTOR if calibrated else 1.0
        self._decode_kv_factor = DECODE_KV_READ_FACTOR if calibrated else 1.0
        self._fixed_overhead_s = (
            STEP_OVERHEAD_S + LAYER_OVERHEAD_S * model.num_layers if calibrated else 0.0
        )
        self._request_overhead_s = REQUEST_OVERHEAD_S if calibrated else 0.0
        self._allreduce_share = 2.0 * (tp - 1) / tp
        self._num_allreduces = 2 * model.num_layers if tp > 1 else 0

    def weight_bytes(self, num_tokens: int) -> float:
        """Weights streamed by a step of ``num_tokens`` tokens (uncorrected)."""
        if num_tokens <= 0:
            return 0.0
        touched = 1.0 - (1.0 - self._expert_fraction) ** num_tokens if self._expert_fraction else 0
        return self._dense_weight_bytes + self._expert_weight_bytes * touched

    def explain(self, batch: BatchShape) -> StepCost:
        if batch.num_tokens == 0:
            return StepCost(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        kv = self._kv_bytes_per_token
        bytes_weights = self.weight_bytes(batch.num_tokens) * self._weight_factor
        bytes_decode = batch.decode_context_tokens * kv * self._decode_kv_factor
        bytes_prefill = batch.prefill_context_tokens * kv
        bytes_write = batch.num_tokens * kv
        flops_linear = (
            self._flops_per_token * batch.num_tokens + self._flops_per_sample * batch.num_sampled
        )
        flops_attention = self._flops_per_pair * batch.attention_pairs
        gpu = self.gpu
        allreduce_s = 0.0
        if self._num_allreduces:
            message = batch.num_tokens * self.model.hidden_size * self.model.dtype_bytes
            allreduce_s = self._num_allreduces * (
                gpu.allreduce_latency_s
                + self._allreduce_share * message / gpu.interconnect_bandwidth
            )
        return StepCost(
            flops_linear=flops_linear,
            flops_attention=flops_attention,
            bytes_weights=bytes_weights,
            bytes_kv_read_decode=bytes_decode,
            bytes_kv_read_prefill=bytes_prefill,
            bytes_kv_write=bytes_write,
            compute_s=(flops_linear + flops_attention) / gpu.tensor_flops,
            memory_s=(bytes_weights + bytes_decode + bytes_prefill + bytes_write)
            / gpu.hbm_bandwidth,
            overhead_s=self._fixed_overhead_s + self._request_overhead_s * batch.num_requests,
            allreduce_s=allreduce_s,
        )

    def step_time(self, batch: BatchShape) -> float:
        return self.explain(batch).total_s


def roofline_for(gpu: str, model: str, *, calibrated: bool = True) -> RooflineStepTime:
    """The step-time model for profile names (ValueError listing valid names otherwise)."""
    return RooflineStepTime(get_gpu(gpu), get_model(model), calibrated=calibrated)


def num_blocks_for(
    gpu: str | GpuProfile,
    model: str | ModelProfile,
    gpu_memory_utilization: float = 0.9,
    block_size: int = 16,
) -> int:
    """KV blocks a vLLM replica of ``model`` on ``gpu`` would allocate (per TP group)."""
    gpu_profile = get_gpu(gpu) if isinstance(gpu, str) else gpu
    model_profile = get_model(model) if isinstance(model, str) else model
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    budget = (
        gpu_profile.memory_bytes * gpu_memory_utilization
        - model_profile.weight_bytes_per_gpu
        - ACTIVATION_RESERVE_BYTES
    )
    block_bytes = model_profile.kv_bytes_per_token_per_gpu * block_size
    num_blocks = int(budget // block_bytes)
    if num_blocks < 2:
        raise ValueError(
            f"{model_profile.name} (tp={model_profile.tensor_parallel}) leaves no room for KV "
            f"on {gpu_profile.name} at gpu_memory_utilization={gpu_memory_utilization}"
        )
    return num_blocks
