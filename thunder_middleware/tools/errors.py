"""Errors of the tool-environment layer, each knowing its HTTP status and OpenAI error code.

The router turns them into ``{"error": {...}}`` bodies; the manager raises them so that bad
input is reported to the agent (4xx) and never mistaken for an engine fault (5xx).
"""

from __future__ import annotations


class ToolEnvironmentError(Exception):
    status_code = 500
    error_type = "server_error"
    code = "environment_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidSpec(ToolEnvironmentError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_environment_spec"


class UnknownImage(InvalidSpec):
    code = "unknown_image"


class UnknownPreset(InvalidSpec):
    code = "unknown_preset"


class NoEnvironment(ToolEnvironmentError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "environment_not_declared"


class ProgramReleased(ToolEnvironmentError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "program_released"


class PreparationFailed(ToolEnvironmentError):
    """The environment could not be made ready (readiness timed out, container exited...)."""

    status_code = 424
    error_type = "environment_error"
    code = "environment_preparation_failed"


class EnvironmentGone(ToolEnvironmentError):
    """The environment was reclaimed while a caller waited on it."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "environment_reclaimed"


class TransientProviderError(ToolEnvironmentError):
    """An engine hiccup worth retrying (connection reset, 5xx from the engine API)."""

    status_code = 503
    error_type = "server_error"
    code = "environment_engine_unavailable"


class ProviderError(ToolEnvironmentError):
    status_code = 502
    error_type = "server_error"
    code = "environment_engine_error"
