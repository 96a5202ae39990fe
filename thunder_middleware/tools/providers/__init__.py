"""Environment providers behind one interface, chosen by name (``--env-provider``)."""

from __future__ import annotations

from typing import Any

from thunder_middleware.tools.providers.base import EnvironmentProvider


def make_provider(name: str, **options: Any) -> EnvironmentProvider:
    """``local`` (default, no engine), ``docker`` (Docker API, e.g. Podman) or ``kubernetes``.

    Imports are lazy so a sidecar on the local provider needs neither the docker SDK's engine
    nor the kubernetes client.
    """
    if name == "local":
        from thunder_middleware.tools.providers.local import LocalProvider

        return LocalProvider(**options)
    if name == "docker":
        from thunder_middleware.tools.providers.docker import DockerProvider

        return DockerProvider(**options)
    if name == "kubernetes":
        from thunder_middleware.tools.providers.kubernetes import KubernetesProvider

        return KubernetesProvider(**options)
    raise ValueError(f"unknown environment provider {name!r} (local, docker, kubernetes)")


__all__ = ["EnvironmentProvider", "make_provider"]
