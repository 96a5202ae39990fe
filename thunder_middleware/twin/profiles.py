"""GPU and model profiles: plain data that ``roofline.py`` turns into step times and KV
capacity. Figures from vendor datasheets and the models' Hugging Face configs; "achieved"
rates are what large copies / GEMMs reach in practice (DESIGN.md section 8), which is what a
roofline of a real serving step should divide by.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class GpuProfile:
    name: str
    description: str
    memory_bytes: int  # what the driver reports as total device memory
    hbm_bandwidth_peak: float  # bytes/s, datasheet
    hbm_bandwidth: float  # bytes/s, achieved in a large device-to-device copy
    tensor_flops_peak: float  # dense bf16 FLOP/s, datasheet
    tensor_flops: float  # dense bf16 FLOP/s achieved in a large GEMM
    interconnect_bandwidth: float  # bytes/s per GPU for all-reduce (NVLink), achieved
    allreduce_latency_s: float  # fixed cost of one small all-reduce across the TP group


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """A decoder-only transformer in bf16. ``tensor_parallel`` is how it is served: weights
    and KV heads split across that many GPUs of one node (KV heads replicated when there
    are fewer KV heads than GPUs)."""

    name: str
    hf_id: str
    total_params: float
    active_params: float  # per token (MoE: routed experts only)
    embedding_params: float  # input embedding: gathered, not streamed through compute
    lm_head_params: float  # output projection: applied to sampled positions only
    num_layers: int
    hidden_size: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    tensor_parallel: int = 1
    num_experts: int = 0  # routed experts per MoE layer (0: dense)
    experts_per_token: int = 0
    expert_params: float = 0.0  # all routed experts of all layers
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        """Logical KV of one token over all layers (K and V)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def kv_heads_per_gpu(self) -> int:
        return max(1, self.num_kv_heads // self.tensor_parallel)

    @property
    def kv_bytes_per_token_per_gpu(self) -> int:
        return 2 * self.num_layers * self.kv_heads_per_gpu * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes_per_gpu(self) -> float:
        return self.total_params * self.dtype_bytes / self.tensor_parallel


GPUS: dict[str, GpuProfile] = {
    "h100": GpuProfile(
        name="h100",
        description="NVIDIA H100 SXM 80GB (HBM3)",
        memory_bytes=int(79.2 * GIB),
        hbm_bandwidth_peak=3.35e12,
        hbm_bandwidth=3.0e12,
        tensor_flops_peak=989e12,
        tensor_flops=790e12,
        interconnect_bandwidth=360e9,  # NVLink 4: 450 GB/s per direction, ~80% achieved
        allreduce_latency_s=8e-6,
    ),
    "a100": GpuProfile(
        name="a100",
        description="NVIDIA A100 SXM 80GB (HBM2e)",
        memory_bytes=int(79.15 * GIB),
        hbm_bandwidth_peak=2.039e12,
        hbm_bandwidth=1.75e12,
        tensor_flops_peak=312e12,
        tensor_flops=250e12,
        interconnect_bandwidth=240e9,  # NVLink 3: 300 GB/s per direction, ~80% achieved
        allreduce_latency_s=10e-6,
    ),
}

MODELS: dict[str, ModelProfile] = {
    "qwen3-8b": ModelProfile(
        name="qwen3-8b",
        hf_id="Qwen/Qwen3-8B",
        total_params=8.19e9,
        active_params=8.19e9,
        embedding_params=151_936 * 4096,
        lm_head_params=151_936 * 4096,
        num_layers=36,
        hidden_size=4096,
        num_q_heads=32,
        num_kv_heads=8,
        head_dim=128,
    ),
    "llama-3.1-8b": ModelProfile(
        name="llama-3.1-8b",
        hf_id="meta-llama/Llama-3.1-8B-Instruct",
        total_params=8.03e9,
        active_params=8.03e9,
        embedding_params=128_256 * 4096,
        lm_head_params=128_256 * 4096,
        num_layers=32,
        hidden_size=4096,
        num_q_heads=32,
        num_kv_heads=8,
        head_dim=128,
    ),
    "qwen3-235b-a22b": ModelProfile(
        name="qwen3-235b-a22b",
        hf_id="Qwen/Qwen3-235B-A22B",
        total_params=235e9,
        active_params=22e9,
        embedding_params=151_936 * 4096,
        lm_head_params=151_936 * 4096,
        num_layers=94,
        hidden_size=4096,
        num_q_heads=64,
        num_kv_heads=4,
        head_dim=128,
        tensor_parallel=8,
        num_experts=128,
        experts_per_token=8,
        # 94 layers x 128 experts x 3 matrices of 4096 x 1536 (moe_intermediate_size)
        expert_params=94 * 128 * 3 * 4096 * 1536,
    ),
}


def get_gpu(name: str) -> GpuProfile:
    try:
        return GPUS[name]
    except KeyError:
        raise ValueError(
            f"unknown GPU profile {name!r}; valid names: {', '.join(sorted(GPUS))}"
        ) from None


def get_model(name: str) -> ModelProfile:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model profile {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None
