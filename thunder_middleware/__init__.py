"""thunder-middleware: a program-aware sidecar scheduler for LLM agent fleets.

Agents tag their OpenAI calls with a program id; the sidecar pauses, restores, reorders and
routes those calls across vLLM replicas so that KV caches are not thrashed, and readies and
reclaims each program's tool environments. See ``docs/ARCHITECTURE.md``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
