"""The disconnect watch every proxied call runs under (``gates.unless_disconnected``).

It cancels the call in the request's own task when the client leaves, so it must tell that
cancellation apart from anyone else's (server shutdown, an enclosing timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from thunder_middleware.sidecar import gates
from thunder_middleware.sidecar.gates import ClientDisconnected, Receive, unless_disconnected


class Client:
    """An ASGI ``receive`` whose body was read: it answers only when the client leaves."""

    def __init__(self) -> None:
        self.left = asyncio.Event()

    async def receive(self) -> MutableMapping[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}


async def test_the_result_comes_back_and_the_watch_is_gone() -> None:
    client = Client()
    before = len(asyncio.all_tasks())
    assert await unless_disconnected(asyncio.sleep(0.01, result="answer"), client.receive) == (
        "answer")
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before


async def test_a_client_that_leaves_cancels_the_call() -> None:
    client = Client()
    cancelled = asyncio.Event()

    async def upstream() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    asyncio.get_running_loop().call_later(0.02, client.left.set)
    with pytest.raises(ClientDisconnected):
        await unless_disconnected(upstream(), client.receive)
    assert cancelled.is_set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the request task is not poisoned


async def test_someone_elses_cancellation_is_not_a_disconnect() -> None:
    client = Client()
    call = asyncio.ensure_future(unless_disconnected(asyncio.sleep(30), client.receive))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_an_enclosing_timeout_still_fires() -> None:
    client = Client()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await unless_disconnected(asyncio.sleep(30), client.receive)


async def test_a_disconnect_after_the_answer_changes_nothing() -> None:
    client = Client()
    result = await unless_disconnected(asyncio.sleep(0, result=1), client.receive)
    client.left.set()
    await asyncio.sleep(0.01)  # the cancelled watch must not cancel this task later
    assert result == 1
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_only_a_call_longer_than_the_delay_pays_for_a_watch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    watches: list[Receive] = []
    real = gates.until_disconnect

    async def counted(receive: Receive) -> None:
        watches.append(receive)
        await real(receive)

    monkeypatch.setattr(gates, "until_disconnect", counted)
    client = Client()
    await unless_disconnected(asyncio.sleep(0.001), client.receive)
    await asyncio.sleep(gates.DISCONNECT_WATCH_DELAY_S * 2)  # a cancelled timer stays silent
    assert watches == []
    await unless_disconnected(asyncio.sleep(gates.DISCONNECT_WATCH_DELAY_S * 2), client.receive)
    assert len(watches) == 1
