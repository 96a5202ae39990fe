"""Engine-twin cores for the harness, built from a named GPU + model profile.

One place turns "H100 + Qwen3-8B at 0.9 memory utilization" into an ``EngineCore`` so the
harness, the sweeps and the tests all size replicas the same way the twin server does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from thunder_middleware.twin.engine import EngineConfig, EngineCore
from thunder_middleware.twin.roofline import num_blocks_for, roofline_for


@dataclass(frozen=True)
class EngineSpec:
    """How each replica of a run is configured (vLLM's defaults unless overridden)."""

    gpu: str = "h100"
    model: str = "qwen3-8b"
    num_blocks: int | None = None  # None: what the profile's memory leaves for KV
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024
    max_model_len: int = 131072

    def blocks(self) -> int:
        if self.num_blocks is not None:
            return self.num_blocks
        return num_blocks_for(self.gpu, self.model, self.gpu_memory_utilization, self.block_size)

    def capacity_tokens(self) -> int:
        return self.blocks() * self.block_size

    def with_capacity(self, tokens: int) -> EngineSpec:
        """The same replica with at least ``tokens`` of KV (the ceiling's unlimited KV)."""
        return replace(self, num_blocks=max(self.blocks(), -(-tokens // self.block_size)))


def build_engine(spec: EngineSpec) -> EngineCore:
    step_model = roofline_for(spec.gpu, spec.model)
    return EngineCore(EngineConfig(
        num_blocks=spec.blocks(),
        block_size=spec.block_size,
        max_num_batched_tokens=spec.max_num_batched_tokens,
        max_num_seqs=spec.max_num_seqs,
        max_model_len=spec.max_model_len,
        step_model=step_model,
    ))
