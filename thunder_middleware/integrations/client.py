"""A typed client for the sidecar's control API (contract 3), sync and async.

Integrations run inside someone else's agent loop, so the client retries what is worth
retrying (connection errors, 502/503/504 while a sidecar restarts) with tenacity and
surfaces everything else as :class:`ThunderAPIError` carrying the sidecar's OpenAI-style
error. The two clients share one description of each call (:class:`_Call`), so the sync and
async paths cannot drift apart.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from thunder_middleware.tools.handles import EnvHandle, ExecResult

DEFAULT_SIDECAR_URL = "http://127.0.0.1:9000"
RETRYABLE_STATUS = frozenset({502, 503, 504})

__all__ = [
    "AsyncThunderClient",
    "EnvHandle",
    "ExecResult",
    "ThunderAPIError",
    "ThunderClient",
    "ToolIntent",
    "default_sidecar_url",
    "format_exec_result",
]


def default_sidecar_url() -> str:
    """``THUNDER_SIDECAR_URL``, else ``OPENAI_BASE_URL`` without ``/v1``, else localhost."""
    url = os.environ.get("THUNDER_SIDECAR_URL") or os.environ.get("OPENAI_BASE_URL")
    return control_url(url or DEFAULT_SIDECAR_URL)


def control_url(url: str) -> str:
    """Accept either the sidecar root or its OpenAI base (``.../v1``) and return the root."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class ThunderAPIError(Exception):
    """The sidecar answered with an error; fields mirror its OpenAI-style error body."""

    def __init__(self, status_code: int, message: str, type_: str | None = None,
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    @classmethod
    def from_response(cls, response: httpx.Response) -> ThunderAPIError:
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        if not isinstance(error, Mapping):
            error = {"message": str(error)}
        return cls(
            response.status_code,
            str(error.get("message") or response.text[:500] or response.reason_phrase),
            error.get("type"),
            error.get("code"),
            error.get("param"),
        )

    @property
    def retryable(self) -> bool:
        return self.status_code in RETRYABLE_STATUS


@dataclass(frozen=True, slots=True)
class ToolIntent:
    """A tool the program is about to call (arguments are advisory, for environment choice)."""

    name: str
    arguments: Mapping[str, Any] | str | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name}
        if self.arguments is not None:
            body["arguments"] = self.arguments
        return body


@dataclass(frozen=True, slots=True)
class _Call:
    """One control-API request, independent of how it is sent."""

    method: str
    path: str
    body: Any = None
    none_on: frozenset[int] = field(default_factory=frozenset)  # statuses answered with None


def _pid(program_id: str) -> str:
    return quote(program_id, safe="")


def _environment_body(spec: Mapping[str, Any] | None, preset: str | None) -> dict[str, Any]:
    if spec is not None and preset is not None:
        raise ValueError("give an environment spec or a preset, not both")
    if preset is not None:
        return {"preset": preset}
    return dict(spec or {})


def _intents(tools: Sequence[ToolIntent | str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools:
        if isinstance(tool, ToolIntent):
            out.append(tool.as_json())
        elif isinstance(tool, str):
            out.append({"name": tool})
        else:
            out.append(dict(tool))
    return out


class _Calls:
    """The control API as data: each method returns the request to send."""

    @staticmethod
    def register(program_id: str, environment: Mapping[str, Any] | None,
                 preset: str | None) -> _Call:
        body: dict[str, Any] = {"program_id": program_id}
        if environment is not None:
            body["environment"] = dict(environment)
        if preset is not None:
            body["preset"] = preset
        return _Call("POST", "/programs", body)

    @staticmethod
    def release(program_id: str, missing_ok: bool) -> _Call:
        return _Call("POST", "/programs/release", {"program_id": program_id},
                     frozenset({404}) if missing_ok else frozenset())

    @staticmethod
    def program(program_id: str) -> _Call:
        return _Call("GET", f"/programs/{_pid(program_id)}", none_on=frozenset({404}))

    @staticmethod
    def programs() -> _Call:
        return _Call("GET", "/programs")

    @staticmethod
    def declare_environment(program_id: str, spec: Mapping[str, Any] | None,
                            preset: str | None) -> _Call:
        return _Call("PUT", f"/programs/{_pid(program_id)}/environment",
                     _environment_body(spec, preset))

    @staticmethod
    def tool_intent(program_id: str,
                    tools: Sequence[ToolIntent | str | Mapping[str, Any]]) -> _Call:
        return _Call("POST", f"/programs/{_pid(program_id)}/tool-intent",
                     {"tools": _intents(tools)})

    @staticmethod
    def exec(program_id: str, command: Sequence[str] | str, timeout_s: float | None,
             workdir: str | None) -> _Call:
        body: dict[str, Any] = {"command": command if isinstance(command, str) else list(command)}
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        if workdir is not None:
            body["workdir"] = workdir
        return _Call("POST", f"/programs/{_pid(program_id)}/exec", body)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, ThunderAPIError):
        return exc.retryable
    return isinstance(exc, httpx.TransportError)


def _decode(call: _Call, response: httpx.Response) -> Any:
    if response.status_code in call.none_on:
        return None
    if response.status_code >= 400:
        raise ThunderAPIError.from_response(response)
    if not response.content:
        return None
    return response.json()


def _handle(data: Any) -> EnvHandle | None:
    """Tool intent and environment routes answer a handle, possibly wrapped, or null."""
    if not isinstance(data, Mapping):
        return None
    if "env_id" not in data:
        for key in ("environment", "handle"):
            if isinstance(data.get(key), Mapping):
                return EnvHandle.model_validate(data[key])
        return None
    return EnvHandle.model_validate(data)


@dataclass
class _Settings:
    base_url: str
    api_key: str | None
    timeout_s: float
    attempts: int

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def retry_kwargs(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.attempts),
            "wait": wait_exponential(multiplier=0.1, max=2.0),
            "retry": retry_if_exception(_is_retryable),
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

    def _send(self, call: _Call, timeout_s: float | None = None) -> Any:
        for attempt in Retrying(**self.settings.retry_kwargs()):
            with attempt:
                response = self._http.request(call.method, call.path, json=call.body,
                                              timeout=timeout_s or self.settings.timeout_s)
                if response.status_code in RETRYABLE_STATUS:
                    raise ThunderAPIError.from_response(response)
                return _decode(call, response)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def health(self) -> bool:
        try:
            return self._http.get("/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def register(self, program_id: str, *, environment: Mapping[str, Any] | None = None,
                 preset: str | None = None) -> dict[str, Any]:
        return dict(self._send(_Calls.register(program_id, environment, preset)) or {})

    def release(self, program_id: str, *, missing_ok: bool = True) -> dict[str, Any] | None:
        result = self._send(_Calls.release(program_id, missing_ok))
        return dict(result) if result is not None else None

    def program(self, program_id: str) -> dict[str, Any] | None:
        return self._send(_Calls.program(program_id))

    def programs(self) -> list[dict[str, Any]]:
        return _program_list(self._send(_Calls.programs()))

    def declare_environment(self, program_id: str, spec: Mapping[str, Any] | None = None, *,
                            preset: str | None = None) -> EnvHandle | None:
        return _handle(self._send(_Calls.declare_environment(program_id, spec, preset)))

    def tool_intent(self, program_id: str,
                    tools: Sequence[ToolIntent | str | Mapping[str, Any]]) -> EnvHandle | None:
        return _handle(self._send(_Calls.tool_intent(program_id, tools)))

    def exec(self, program_id: str, command: Sequence[str] | str, *,
             timeout_s: float | None = None, workdir: str | None = None) -> ExecResult:
        wait = (timeout_s or self.settings.timeout_s) + 30.0
        data = self._send(_Calls.exec(program_id, command, timeout_s, workdir), wait)
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

    async def _send(self, call: _Call, timeout_s: float | None = None) -> Any:
        async for attempt in AsyncRetrying(**self.settings.retry_kwargs()):
            with attempt:
                response = await self._client().request(
                    call.method, call.path, json=call.body,
                    timeout=timeout_s or self.settings.timeout_s)
                if response.status_code in RETRYABLE_STATUS:
                    raise ThunderAPIError.from_response(response)
                return _decode(call, response)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def health(self) -> bool:
        try:
            return (await self._client().get("/health", timeout=5.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def register(self, program_id: str, *, environment: Mapping[str, Any] | None = None,
                       preset: str | None = None) -> dict[str, Any]:
        return dict(await self._send(_Calls.register(program_id, environment, preset)) or {})

    async def release(self, program_id: str, *,
                      missing_ok: bool = True) -> dict[str, Any] | None:
        result = await self._send(_Calls.release(program_id, missing_ok))
        return dict(result) if result is not None else None

    async def program(self, program_id: str) -> dict[str, Any] | None:
        return await self._send(_Calls.program(program_id))

    async def programs(self) -> list[dict[str, Any]]:
        return _program_list(await self._send(_Calls.programs()))

    async def declare_environment(self, program_id: str,
                                  spec: Mapping[str, Any] | None = None, *,
                                  preset: str | None = None) -> EnvHandle | None:
        return _handle(await self._send(_Calls.declare_environment(program_id, spec, preset)))

    async def tool_intent(self, program_id: str,
                          tools: Sequence[ToolIntent | str | Mapping[str, Any]]
                          ) -> EnvHandle | None:
        return _handle(await self._send(_Calls.tool_intent(program_id, tools)))

    async def exec(self, program_id: str, command: Sequence[str] | str, *,
                   timeout_s: float | None = None, workdir: str | None = None) -> ExecResult:
        wait = (timeout_s or self.settings.timeout_s) + 30.0
        data = await self._send(_Calls.exec(program_id, command, timeout_s, workdir), wait)
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


def format_exec_result(result: ExecResult) -> str:
    """What a model sees of a command: exit status first, then its output streams."""
    parts = [f"exit_code: {result.exit_code}"]
    if result.stdout:
        parts.append(f"stdout:\n{result.stdout}")
    if result.stderr:
        parts.append(f"stderr:\n{result.stderr}")
    if result.truncated:
        parts.append("(output truncated)")
    return "\n".join(parts)


def _program_list(data: Any) -> list[dict[str, Any]]:
    """``GET /programs`` may answer a list or ``{"programs": [...]}`` (or ``data``)."""
    if isinstance(data, Mapping):
        for key in ("programs", "data"):
            if isinstance(data.get(key), list):
                return [dict(item) for item in data[key]]
        return []
    return [dict(item) for item in data or []]
