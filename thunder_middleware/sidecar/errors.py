"""OpenAI-style error bodies, and the handlers that guarantee no traceback ever leaves.

Clients of the sidecar are OpenAI SDKs and agent frameworks: they parse
``{"error": {"message", "type", "param", "code"}}`` and retry on 429/503 honouring
``Retry-After``. Every failure path, including ones we did not foresee, must speak that.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error the sidecar answers deliberately, with its status and OpenAI-style body."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or _TYPE_BY_STATUS.get(status_code, "api_error")
        self.retry_after = retry_after

    def body(self) -> dict[str, dict[str, str | None]]:
        return error_body(self.message, self.error_type, self.param, self.code)

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        return JSONResponse(self.body(), status_code=self.status_code, headers=headers)


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None) -> APIError:
    return APIError(404, message, param=param, code="not_found")


def no_backend(down: dict[str, str] | None = None, retry_after: float = 5.0) -> APIError:
    """503 naming each backend that is down and why (``down``: URL to cause)."""
    causes = "; ".join(f"{url}: {reason}" for url, reason in (down or {}).items())
    return APIError(
        503,
        "no healthy backend is available" + (f" ({causes})" if causes else "")
        + "; retry later (GET /health shows each backend)",
        code="no_healthy_backend",
        retry_after=retry_after,
    )


def error_response(exc: Exception) -> Response:
    """The OpenAI-style answer to any exception a request raised: the one mapping shared by
    FastAPI's handlers and the raw completion path (``fast_path``)."""
    if isinstance(exc, APIError):
        return exc.response()
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        location = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = f"{location or 'request'}: {first.get('msg', 'invalid request')}"
        return APIError(400, message, param=location or None, code="invalid_value").response()
    if isinstance(exc, StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail), code="http_error").response()
    if isinstance(exc, ClientDisconnect):
        # the client hung up before its body was read: nobody is left to answer, and it
        # is no fault of the sidecar (no 500, no traceback in the log)
        return Response(status_code=499)  # nginx's "client closed request"
    log.exception("unexpected error in the sidecar", exc_info=exc)
    return APIError(500, "internal error in the sidecar", code="internal_error",
                    error_type="api_error").response()


async def _handler(_: Request, exc: Exception) -> Response:
    return error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception class to an OpenAI-style answer."""
    for exception_class in (APIError, RequestValidationError, StarletteHTTPException,
                            ClientDisconnect, Exception):
        app.add_exception_handler(exception_class, _handler)
