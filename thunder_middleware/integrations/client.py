"""Typed clients for the sidecar's control API (contract 3), sync and async.

Integrations run inside someone else's agent loop, so the clients retry what is worth
retrying (connection errors, 502/503/504 while a sidecar restarts) with tenacity and
surface everything else as :class:`ThunderAPIError` carrying the sidecar's OpenAI-style
error. What each call sends is described once in :mod:`control_api`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from thunder_middleware.integrations.control_api import (
    RETRYABLE_STATUS,
    Call,
    Calls,
    EnvHandle,
    ExecResult,
    ThunderAPIError,
    ToolIntent,
    control_url,
    decode,
    default_sidecar_url,
    env_handle,
    first_check,
    format_exec_result,
    program_list,
    refuse_if_not_sidecar,
    warn_unless_sidecar,
)

__all__ = [
    "AsyncThunderClient",
    "EnvHandle",
    "ExecResult",
    "ThunderAPIError",
    "ThunderClient",
    "ToolIntent",
    "control_url",
    "default_sidecar_url",
    "format_exec_result",
]


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, ThunderAPIError):
        return exc.retryable
    return isinstance(exc, httpx.TransportError)


def _never_sent(exc: BaseException) -> bool:
    """The request did not reach the sidecar: safe to send again even if not idempotent.

    A read timeout or a 502/504 may come after the command started, so an exec is not
    retried on those (the command could run twice).
    """
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


@dataclass
class _Settings:
    base_url: str
    api_key: str | None
    timeout_s: float
    attempts: int

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def retry_kwargs(self, call: Call) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.attempts),
            "wait": wait_exponential(multiplier=0.1, max=2.0),
            "retry": retry_if_exception(_is_retryable if call.idempotent else _never_sent),
            "reraise": True,
        }


def _settings(base_url: str | None, api_key: str | None, timeout_s: float,
              attempts: int) -> _Settings:
    key = api_key if api_key is not None else os.environ.get("THUNDER_API_KEY")
    url = control_url(base_url) if base_url else default_sidecar_url()
    return _Settings(url, key, timeout_s, max(1, attempts))


class ThunderClient:
    """Blocking client; safe to share between threads (httpx.Client is)."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 timeout_s: float = 30.0, attempts: int = 4) -> None:
        self.settings = _settings(base_url, api_key, timeout_s, attempts)
        self._http = httpx.Client(base_url=self.settings.base_url,
                                  headers=self.settings.headers(), timeout=timeout_s)

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def _check_once(self) -> None:
        if first_check(self.settings.base_url):
            try:
                response: httpx.Response | None = self._http.get("/health", timeout=5.0)
            except httpx.HTTPError:
                response = None
            warn_unless_sidecar(self.settings.base_url, response)

    def _send(self, call: Call, timeout_s: float | None = None) -> Any:
        self._check_once()
        if refuse_if_not_sidecar(self.settings.base_url, call):
            return None
        for attempt in Retrying(**self.settings.retry_kwargs(call)):
            with attempt:
                response = self._http.request(call.method, call.path, json=call.body,
                                              timeout=timeout_s or self.settings.timeout_s)
                if response.status_code in RETRYABLE_STATUS:
                    raise ThunderAPIError.from_response(response)
                return decode(call, response)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def health(self) -> bool:
        try:
            return self._http.get("/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def register(self, program_id: str, *, environment: Mapping[str, Any] | None = None,
                 preset: str | None = None) -> dict[str, Any]:
        return dict(self._send(Calls.register(program_id, environment, preset)) or {})

    def release(self, program_id: str, *, missing_ok: bool = True) -> dict[str, Any] | None:
        result = self._send(Calls.release(program_id, missing_ok))
        return dict(result) if result is not None else None

    def program(self, program_id: str) -> dict[str, Any] | None:
        return self._send(Calls.program(program_id))

    def programs(self) -> list[dict[str, Any]]:
        return program_list(self._send(Calls.programs()))

    def declare_environment(self, program_id: str, spec: Mapping[str, Any] | None = None, *,
                            preset: str | None = None) -> EnvHandle | None:
        return env_handle(self._send(Calls.declare_environment(program_id, spec, preset)))

    def remove_environment(self, program_id: str) -> dict[str, Any]:
        """Reclaim the environment now; the program keeps its spec and may get it back."""
        return dict(self._send(Calls.remove_environment(program_id)) or {})

    def tool_intent(self, program_id: str,
                    tools: Sequence[ToolIntent | str | Mapping[str, Any]]) -> EnvHandle | None:
        return env_handle(self._send(Calls.tool_intent(program_id, tools)))

    def exec(self, program_id: str, command: Sequence[str] | str, *,
             timeout_s: float | None = None, workdir: str | None = None) -> ExecResult:
        wait = (timeout_s or self.settings.timeout_s) + 30.0
        data = self._send(Calls.exec(program_id, command, timeout_s, workdir), wait)
        return ExecResult.model_validate(data)

    @contextmanager
    def releasing(self, program_id: str) -> Iterator[str]:
        """Release ``program_id`` however the block ends (the idle timeout is the backstop)."""
        try:
            yield program_id
        finally:
            self.release(program_id)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ThunderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncThunderClient:
    """Asyncio client for hooks that run on an event loop (LiteLLM, async LangGraph)."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 timeout_s: float = 30.0, attempts: int = 4) -> None:
        self.settings = _settings(base_url, api_key, timeout_s, attempts)
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def _client(self) -> httpx.AsyncClient:
        # Created lazily and per event loop: hooks are often constructed before any loop
        # exists, and an httpx.AsyncClient cannot be reused on another loop (asyncio.run twice).
        loop = asyncio.get_running_loop()
        if self._http is None or self._http.is_closed or self._loop is not loop:
            self._loop = loop
            self._http = httpx.AsyncClient(base_url=self.settings.base_url,
                                           headers=self.settings.headers(),
                                           timeout=self.settings.timeout_s)
        return self._http

    async def _check_once(self) -> None:
        if first_check(self.settings.base_url):
            try:
                response: httpx.Response | None = await self._client().get("/health",
                                                                           timeout=5.0)
            except httpx.HTTPError:
                response = None
            warn_unless_sidecar(self.settings.base_url, response)

    async def _send(self, call: Call, timeout_s: float | None = None) -> Any:
        await self._check_once()
        if refuse_if_not_sidecar(self.settings.base_url, call):
            return None
        async for attempt in AsyncRetrying(**self.settings.retry_kwargs(call)):
            with attempt:
                response = await self._client().request(
                    call.method, call.path, json=call.body,
                    timeout=timeout_s or self.settings.timeout_s)
                if response.status_code in RETRYABLE_STATUS:
                    raise ThunderAPIError.from_response(response)
                return decode(call, response)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def health(self) -> bool:
        try:
            return (await self._client().get("/health", timeout=5.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def register(self, program_id: str, *, environment: Mapping[str, Any] | None = None,
                       preset: str | None = None) -> dict[str, Any]:
        return dict(await self._send(Calls.register(program_id, environment, preset)) or {})

    async def release(self, program_id: str, *,
                      missing_ok: bool = True) -> dict[str, Any] | None:
        result = await self._send(Calls.release(program_id, missing_ok))
        return dict(result) if result is not None else None

    async def program(self, program_id: str) -> dict[str, Any] | None:
        return await self._send(Calls.program(program_id))

    async def programs(self) -> list[dict[str, Any]]:
        return program_list(await self._send(Calls.programs()))

    async def declare_environment(self, program_id: str,
                                  spec: Mapping[str, Any] | None = None, *,
                                  preset: str | None = None) -> EnvHandle | None:
        return env_handle(await self._send(Calls.declare_environment(program_id, spec, preset)))

    async def remove_environment(self, program_id: str) -> dict[str, Any]:
        return dict(await self._send(Calls.remove_environment(program_id)) or {})

    async def tool_intent(self, program_id: str,
                          tools: Sequence[ToolIntent | str | Mapping[str, Any]]
                          ) -> EnvHandle | None:
        return env_handle(await self._send(Calls.tool_intent(program_id, tools)))

    async def exec(self, program_id: str, command: Sequence[str] | str, *,
                   timeout_s: float | None = None, workdir: str | None = None) -> ExecResult:
        wait = (timeout_s or self.settings.timeout_s) + 30.0
        data = await self._send(Calls.exec(program_id, command, timeout_s, workdir), wait)
        return ExecResult.model_validate(data)

    @asynccontextmanager
    async def releasing(self, program_id: str) -> AsyncIterator[str]:
        """Release ``program_id`` however the block ends."""
        try:
            yield program_id
        finally:
            await self.release(program_id)

    async def aclose(self) -> None:
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = None

    async def __aenter__(self) -> AsyncThunderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


