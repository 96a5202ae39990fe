"""Engine adapters (vLLM, SGLang, generic OpenAI) and the pool that monitors them."""

from thunder_middleware.sidecar.backends.base import Backend, BackendMetrics, BackendUnavailable
from thunder_middleware.sidecar.backends.openai_compat import OpenAICompatBackend
from thunder_middleware.sidecar.backends.pool import BackendPool, make_client, make_session
from thunder_middleware.sidecar.backends.sglang import SGLangBackend
from thunder_middleware.sidecar.backends.vllm import VLLMBackend

__all__ = [
    "Backend",
    "BackendMetrics",
    "BackendPool",
    "BackendUnavailable",
    "OpenAICompatBackend",
    "SGLangBackend",
    "VLLMBackend",
    "make_client",
    "make_session",
]
