"""Tool environments: specs, providers (docker, local, kubernetes), the manager and its routes.

The sidecar builds one ``EnvironmentManager`` over a provider (``make_provider``), awaits
``start()`` (reaps orphans of crashed sidecars), mounts ``environment_router(manager, hooks)``,
calls ``declare``/``prepare``/``reclaim`` on program events and ``close()`` at shutdown.
"""

from thunder_middleware.tools.errors import (
    EnvironmentGone,
    InvalidSpec,
    NoEnvironment,
    PreparationFailed,
    ProgramReleased,
    ProviderError,
    ToolEnvironmentError,
    TransientProviderError,
    UnknownImage,
    UnknownPreset,
)
from thunder_middleware.tools.handles import (
    EnvHandle,
    EnvState,
    ExecResult,
    ReclaimedCounts,
    ReclaimReport,
)
from thunder_middleware.tools.manager import EnvironmentManager, ManagerConfig
from thunder_middleware.tools.ports import PortPool, PortsExhausted
from thunder_middleware.tools.providers import make_provider
from thunder_middleware.tools.providers.base import EnvironmentProvider
from thunder_middleware.tools.providers.local import LocalProvider
from thunder_middleware.tools.router import EnvironmentHooks, environment_router, error_response
from thunder_middleware.tools.specs import (
    EnvSpec,
    ReadinessCheck,
    VolumeSpec,
    default_presets,
    load_presets,
    parse_spec,
    resolve_spec,
)

__all__ = [
    "EnvHandle",
    "EnvSpec",
    "EnvState",
    "EnvironmentGone",
    "EnvironmentHooks",
    "EnvironmentManager",
    "EnvironmentProvider",
    "ExecResult",
    "InvalidSpec",
    "LocalProvider",
    "ManagerConfig",
    "NoEnvironment",
    "PortPool",
    "PortsExhausted",
    "PreparationFailed",
    "ProgramReleased",
    "ProviderError",
    "ReadinessCheck",
    "ReclaimReport",
    "ReclaimedCounts",
    "ToolEnvironmentError",
    "TransientProviderError",
    "UnknownImage",
    "UnknownPreset",
    "VolumeSpec",
    "default_presets",
    "environment_router",
    "error_response",
    "load_presets",
    "make_provider",
    "parse_spec",
    "resolve_spec",
]
