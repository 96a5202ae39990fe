"""Polling an environment until its readiness check passes (or its time runs out)."""

from __future__ import annotations

import asyncio
import time

import httpx

from thunder_middleware.tools.errors import PreparationFailed, ToolEnvironmentError
from thunder_middleware.tools.providers.base import EnvironmentProvider, Instance
from thunder_middleware.tools.specs import ReadinessCheck


async def _probe_once(
    provider: EnvironmentProvider,
    instance: Instance,
    check: ReadinessCheck,
    host_ports: dict[int, int],
    client: httpx.AsyncClient,
    attempt_timeout: float,
) -> bool:
    if check.command:
        try:
            result = await provider.exec(instance, check.command, timeout_s=attempt_timeout)
        except ToolEnvironmentError:  # e.g. the container stopped: is_running() will say so
            return False
        return result.exit_code == 0
    port = check.http_port or check.tcp_port
    assert port is not None
    host_port = host_ports.get(port)
    if host_port is None:
        raise PreparationFailed(
            f"readiness check probes port {port}, which the spec does not publish",
            param="readiness",
        )
    if check.http_port:
        try:
            url = f"http://{instance.host}:{host_port}{check.http_path}"
            response = await client.get(url, timeout=attempt_timeout)
        except httpx.HTTPError:
            return False
        return response.status_code < 500
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(instance.host, host_port), attempt_timeout
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def wait_until_ready(
    provider: EnvironmentProvider,
    instance: Instance,
    check: ReadinessCheck | None,
    host_ports: dict[int, int],
) -> None:
    """Return once ready; raise ``PreparationFailed`` if the environment dies or times out."""
    if check is None:
        if not await provider.is_running(instance):
            raise PreparationFailed("the environment's main process exited during start-up")
        return
    deadline = time.monotonic() + check.timeout_s
    # Loopback HTTP only: no proxies from the environment, no TLS context (loading CA files
    # costs ~0.1 s per client, paid by every environment otherwise).
    async with httpx.AsyncClient(trust_env=False, verify=False) as client:
        while True:
            # A probe may take up to the remaining budget (a slow check command is legitimate).
            attempt_timeout = max(deadline - time.monotonic(), 0.5)
            passed = await _probe_once(provider, instance, check, host_ports, client,
                                       attempt_timeout)
            if not await provider.is_running(instance):
                raise PreparationFailed("the environment's main process exited before it was ready")
            if passed:
                return
            if time.monotonic() >= deadline:
                raise PreparationFailed(
                    f"readiness check did not pass within {check.timeout_s:g} s", param="readiness"
                )
            await asyncio.sleep(check.interval_s)
