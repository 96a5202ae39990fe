"""Drop-in integrations: the control-API client, LiteLLM (SDK and proxy), LangChain and
LangGraph hooks.

Attributes are imported lazily (PEP 562) so that ``import thunder_middleware.integrations``
costs nothing and needs neither LiteLLM nor LangChain: a LangGraph user must not pay for
importing LiteLLM, and the sidecar must not need either.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thunder_middleware.integrations.client import (
        AsyncThunderClient,
        ThunderAPIError,
        ThunderClient,
        ToolIntent,
    )
    from thunder_middleware.integrations.langchain import ThunderMiddleware
    from thunder_middleware.integrations.langgraph import (
        ThunderCallbackHandler,
        program_config,
        tag_program,
    )
    from thunder_middleware.integrations.litellm import ThunderLiteLLMCallback
    from thunder_middleware.integrations.litellm_proxy import ThunderProxyHook

_EXPORTS = {
    "AsyncThunderClient": "client",
    "ThunderAPIError": "client",
    "ThunderClient": "client",
    "ToolIntent": "client",
    "ThunderLiteLLMCallback": "litellm",
    "ThunderProxyHook": "litellm_proxy",
    "ThunderMiddleware": "langchain",
    "ThunderCallbackHandler": "langgraph",
    "program_config": "langgraph",
    "tag_program": "langgraph",
}

__all__ = [
    "AsyncThunderClient",
    "ThunderAPIError",
    "ThunderCallbackHandler",
    "ThunderClient",
    "ThunderLiteLLMCallback",
    "ThunderMiddleware",
    "ThunderProxyHook",
    "ToolIntent",
    "program_config",
    "tag_program",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
