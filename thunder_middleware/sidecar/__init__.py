"""The live sidecar: the policy's asyncio runtime, the OpenAI proxy and the control API."""

from thunder_middleware.sidecar.persistence import InMemoryProgramStore, ProgramStore, StoredProgram
from thunder_middleware.sidecar.settings import SidecarSettings, load_settings

__all__ = [
    "InMemoryProgramStore",
    "ProgramStore",
    "SidecarSettings",
    "StoredProgram",
    "load_settings",
]
