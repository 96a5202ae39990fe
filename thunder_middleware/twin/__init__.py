"""The engine twin: a CPU stand-in for a vLLM replica (DESIGN.md section 6).

The core (this package's public API below) is pure Python with no I/O and no clock: paged KV
with vLLM v1's automatic prefix caching, continuous batching with chunked prefill, recompute
preemption, and step times from a roofline of a named GPU and model.
"""

from thunder_middleware.twin.engine import EngineConfig, EngineCore, StepResult
from thunder_middleware.twin.profiles import (
    GPUS,
    MODELS,
    GpuProfile,
    ModelProfile,
    get_gpu,
    get_model,
)
from thunder_middleware.twin.request import EngineRequest, RequestOutput, RequestStatus
from thunder_middleware.twin.roofline import (
    BatchShape,
    RooflineStepTime,
    StepCost,
    StepTimeModel,
    num_blocks_for,
    roofline_for,
)
from thunder_middleware.twin.stats import EngineStats

__all__ = [
    "GPUS",
    "MODELS",
    "BatchShape",
    "EngineConfig",
    "EngineCore",
    "EngineRequest",
    "EngineStats",
    "GpuProfile",
    "ModelProfile",
    "RequestOutput",
    "RequestStatus",
    "RooflineStepTime",
    "StepCost",
    "StepResult",
    "StepTimeModel",
    "get_gpu",
    "get_model",
    "num_blocks_for",
    "roofline_for",
]
