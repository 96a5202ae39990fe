"""A deadline on request headers, which no ASGI middleware can set (the app sees a request
only once its headers are complete).

Invariant: a connection holds the server only while it makes progress towards a request.
From the moment a connection opens, and from the first byte of each further request on it,
its headers must be complete within ``header_timeout``; otherwise it is answered 408 and
closed. Idle keep-alive connections between requests stay uvicorn's business
(``timeout_keep_alive``); bodies are the request limits' (``security.limits``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

log = logging.getLogger(__name__)


def _timeout_answer(timeout_s: float) -> bytes:
    body = orjson.dumps({"error": {
        "message": f"request headers were not received within {timeout_s:g} s",
        "type": "timeout_error", "param": None, "code": "header_timeout"}})
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
            + body)


def header_deadline_protocol(timeout_s: float) -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol with the header deadline (``uvicorn.run(http=...)``);
    uvicorn's own choice ("auto"), without the deadline, where httptools is missing."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        log.warning("httptools is not installed: request headers have no deadline")
        return "auto"

    answer = _timeout_answer(timeout_s)

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            log.info("closing a connection from %s: headers incomplete after %g s",
                     self.client, timeout_s)
            self.transport.write(answer)
            self.transport.close()

    return HeaderDeadlineProtocol
