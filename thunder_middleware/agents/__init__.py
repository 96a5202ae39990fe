"""A small LangGraph coding agent whose tools run in its program's environment."""

from thunder_middleware.agents.coding import (
    CodingAgentResult,
    build_coding_agent,
    run_coding_agent,
    served_model,
)
from thunder_middleware.agents.tools import coding_tools

__all__ = [
    "CodingAgentResult",
    "build_coding_agent",
    "coding_tools",
    "run_coding_agent",
    "served_model",
]
