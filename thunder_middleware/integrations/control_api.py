"""The control API of the sidecar (contract 3) as data: requests, errors, answers.

Kept apart from the clients that send them, so the sync and async clients share one
description of every call and cannot drift apart.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from thunder_middleware.tools.handles import EnvHandle, ExecResult

log = logging.getLogger("thunder_middleware.integrations")

DEFAULT_SIDECAR_URL = "http://127.0.0.1:9000"
RETRYABLE_STATUS = frozenset({502, 503, 504})

__all__ = [
    "RETRYABLE_STATUS",
    "EnvHandle",
    "ExecResult",
    "ThunderAPIError",
    "ToolIntent",
    "control_url",
    "default_sidecar_url",
    "format_exec_result",
]


def default_sidecar_url() -> str:
    """``THUNDER_SIDECAR_URL``, else ``OPENAI_BASE_URL`` without ``/v1``, else localhost."""
    url = os.environ.get("THUNDER_SIDECAR_URL") or os.environ.get("OPENAI_BASE_URL")
    return control_url(url or DEFAULT_SIDECAR_URL)


_checked_urls: set[str] = set()
_not_sidecars: set[str] = set()
_checked_lock = threading.Lock()


def first_check(base_url: str) -> bool:
    """True once per URL and process: whether this caller should check what answers there."""
    with _checked_lock:
        if base_url in _checked_urls:
            return False
        _checked_urls.add(base_url)
        return True


def warn_unless_sidecar(base_url: str, response: httpx.Response | None) -> None:
    """Warn (once per URL, by the caller's :func:`first_check`) when ``GET /health`` at the
    control URL is answered, but not by a sidecar: an agent pointed at the engine itself
    runs, untagged and unscheduled, and every tool intent or release would be a vague 404.
    Nothing answering, or an answer that decides nothing (a 5xx while something restarts,
    401/403 from a gateway), is left to the calls' own errors."""
    if response is None or response.status_code not in (200, 404):
        return
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, Mapping) and "backends" in data and "programs" in data:
        return
    with _checked_lock:
        _not_sidecars.add(base_url)
    log.warning(
        "%s is not a thunder-middleware sidecar (GET /health answered HTTP %s without the "
        "sidecar's fields): programs are neither scheduled nor released there. Point the "
        "model's base URL at the sidecar (e.g. http://127.0.0.1:9000/v1) or set "
        "THUNDER_SIDECAR_URL.", base_url, response.status_code)


def refuse_if_not_sidecar(base_url: str, call: Call) -> bool:
    """After the warning, calls to a URL known not to be a sidecar are not sent: a call
    that tolerates 404 (release, program) answers None, the others raise
    :class:`NotASidecar`, which the integrations log at DEBUG only (the warning said it)."""
    if base_url not in _not_sidecars:
        return False
    if 404 in call.none_on:
        return True
    raise NotASidecar(404, f"{base_url} is not a thunder-middleware sidecar", code="not_a_sidecar")


def not_delivered(what: str, exc: BaseException) -> None:
    """Log a control call an integration could not make (best effort: never raised)."""
    if isinstance(exc, NotASidecar):
        log.debug("%s not delivered: %s", what, exc)
    else:
        log.warning("%s not delivered: %r", what, exc)


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


class NotASidecar(ThunderAPIError):
    """The control URL answers, but not as a sidecar (already warned about, once)."""


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
class Call:
    """One control-API request, independent of how it is sent."""

    method: str
    path: str
    body: Any = None
    none_on: frozenset[int] = field(default_factory=frozenset)  # statuses answered with None
    # False where sending twice could do the work twice (exec): such a call is retried only
    # when it surely never reached the sidecar (the connection was never made).
    idempotent: bool = True


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


class Calls:
    """The control API as data: each method returns the request to send."""

    @staticmethod
    def register(program_id: str, environment: Mapping[str, Any] | None,
                 preset: str | None) -> Call:
        body: dict[str, Any] = {"program_id": program_id}
        if environment is not None:
            body["environment"] = dict(environment)
        if preset is not None:
            body["preset"] = preset
        return Call("POST", "/programs", body)

    @staticmethod
    def release(program_id: str, missing_ok: bool) -> Call:
        return Call("POST", "/programs/release", {"program_id": program_id},
                     frozenset({404}) if missing_ok else frozenset())

    @staticmethod
    def program(program_id: str) -> Call:
        return Call("GET", f"/programs/{_pid(program_id)}", none_on=frozenset({404}))

    @staticmethod
    def programs() -> Call:
        return Call("GET", "/programs")

    @staticmethod
    def declare_environment(program_id: str, spec: Mapping[str, Any] | None,
                            preset: str | None) -> Call:
        return Call("PUT", f"/programs/{_pid(program_id)}/environment",
                     _environment_body(spec, preset))

    @staticmethod
    def remove_environment(program_id: str) -> Call:
        return Call("DELETE", f"/programs/{_pid(program_id)}/environment")

    @staticmethod
    def tool_intent(program_id: str,
                    tools: Sequence[ToolIntent | str | Mapping[str, Any]]) -> Call:
        return Call("POST", f"/programs/{_pid(program_id)}/tool-intent",
                     {"tools": _intents(tools)})

    @staticmethod
    def exec(program_id: str, command: Sequence[str] | str, timeout_s: float | None,
             workdir: str | None) -> Call:
        body: dict[str, Any] = {"command": command if isinstance(command, str) else list(command)}
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        if workdir is not None:
            body["workdir"] = workdir
        return Call("POST", f"/programs/{_pid(program_id)}/exec", body, idempotent=False)


def decode(call: Call, response: httpx.Response) -> Any:
    if response.status_code in call.none_on:
        return None
    if response.status_code >= 400:
        raise ThunderAPIError.from_response(response)
    if not response.content:
        return None
    return response.json()


def env_handle(data: Any) -> EnvHandle | None:
    """Tool intent and environment routes answer a handle, possibly wrapped, or null."""
    if not isinstance(data, Mapping):
        return None
    if "env_id" not in data:
        for key in ("environment", "handle"):
            if isinstance(data.get(key), Mapping):
                return EnvHandle.model_validate(data[key])
        return None
    return EnvHandle.model_validate(data)


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


def program_list(data: Any) -> list[dict[str, Any]]:
    """``GET /programs`` may answer a list or ``{"programs": [...]}`` (or ``data``)."""
    if isinstance(data, Mapping):
        for key in ("programs", "data"):
            if isinstance(data.get(key), list):
                return [dict(item) for item in data[key]]
        return []
    return [dict(item) for item in data or []]
