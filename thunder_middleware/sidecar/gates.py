"""Where requests of paused programs wait: one asyncio future per waiting request.

A waiting request costs nothing while it waits (no polling): the runtime resolves its
future with a backend name when a Restore (or Admit) decision names its program, or fails
it when the program ends. The only other thing a waiter watches is its own client, through
the ASGI ``receive`` channel, so a client that hangs up leaves the queue within 50 ms
(``DISCONNECT_WATCH_DELAY_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

T = TypeVar("T")

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ClientDisconnected(Exception):
    """The client hung up while its request waited at the gate."""


class ProgramEnded(Exception):
    """The program was released or expired while a request of it waited."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProgramGates:
    """Waiting requests by program key."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[asyncio.Future[str]]] = {}

    def open(self, key: str) -> asyncio.Future[str]:
        """A future for one request; open it BEFORE telling the policy, so that a Restore
        applied during that very call finds it."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        return future

    def let_through(self, key: str, backend: str) -> int:
        """Resolve every waiting request of ``key`` to ``backend``; returns how many."""
        futures = self._waiting.pop(key, [])
        released = 0
        for future in futures:
            if not future.done():
                future.set_result(backend)
                released += 1
        return released

    def fail(self, key: str, reason: str) -> None:
        for future in self._waiting.pop(key, []):
            if not future.done():
                future.set_exception(ProgramEnded(reason))

    def discard(self, key: str, future: asyncio.Future[str]) -> None:
        futures = self._waiting.get(key)
        if futures is None:
            return
        with contextlib.suppress(ValueError):
            futures.remove(future)
        if not futures:
            del self._waiting[key]

    def is_waiting(self, key: str) -> bool:
        return bool(self._waiting.get(key))

    def waiting_count(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())


async def until_disconnect(receive: Receive) -> None:
    """Return when the client hangs up (the body was already read, so only
    ``http.disconnect`` can come)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


#: how long a call runs before its client is watched for a disconnect
DISCONNECT_WATCH_DELAY_S = 0.05


async def unless_disconnected(awaitable: Awaitable[T], receive: Receive) -> T:
    """Await ``awaitable`` in this task, but give up (cancelling it) if the client
    disconnects first; raises ClientDisconnected then.

    Cancelling an upstream call closes its connection, which is how the backend learns to
    abort the request. The watch (a task reading ``receive``) starts only once the call has
    run ``DISCONNECT_WATCH_DELAY_S``: every proxied call passes here, and a call that ends
    sooner never pays for a task, while a departure is still noticed within 50 ms, which is
    nothing next to an LLM call's seconds. ``Task.uncancel`` tells the watch's cancellation
    apart from anyone else's (shutdown, an enclosing timeout), which is re-raised.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    watching = True
    disconnected = False
    watcher: asyncio.Task[None] | None = None

    def on_disconnect(watch: asyncio.Future[None]) -> None:
        nonlocal disconnected
        if watching and not watch.cancelled() and watch.exception() is None:
            disconnected = True
            task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(until_disconnect(receive))
        watcher.add_done_callback(on_disconnect)

    timer = loop.call_later(DISCONNECT_WATCH_DELAY_S, start_watching)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if disconnected and task.uncancel() == 0:
            raise ClientDisconnected() from None
        raise
    finally:
        watching = False
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def wait_for_backend(future: asyncio.Future[str], receive: Receive) -> str:
    """The backend ``future`` resolves to, unless the client disconnects first."""
    if future.done():
        return future.result()
    return await unless_disconnected(asyncio.shield(future), receive)
