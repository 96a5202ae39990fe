"""The floor of any Python proxy hop here: a bare ASGI pass-through (uvicorn + aiohttp).

No policy, no middleware, no parsing: the request body goes to the upstream as it came and
the answer comes back. ``benchmarks.sidecar_latency`` measures it beside the sidecar, so the
sidecar's added latency can be split into what one more loopback hop costs on this machine
and what the sidecar itself adds on top.

    .venv/bin/python -m benchmarks.bare_proxy UPSTREAM_URL PORT
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn

Message = dict[str, Any]


def make_app(upstream: str) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: Message, receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2048))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if session is not None:
                        await session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert session is not None
        async with session.post(upstream + scope["path"], data=body,
                                headers={"content-type": "application/json"}) as answer:
            content = await answer.read()
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(content)).encode())]})
            await send({"type": "http.response.body", "body": content})

    return app


def main() -> None:
    upstream, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(make_app(upstream), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
