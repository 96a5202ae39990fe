"""Running a blocking client SDK (docker, kubernetes) off the event loop.

A private thread pool, not ``asyncio.to_thread``: the default executor has ``cpu + 4`` threads,
and an exec streaming output holds one thread for the command's whole duration, so a few
long commands would starve every other engine call of the sidecar.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from thunder_middleware.tools.errors import ToolEnvironmentError

T = TypeVar("T")
ErrorMapper = Callable[[Exception, str], ToolEnvironmentError]


class BlockingCalls:
    def __init__(self, max_threads: int, name: str, map_error: ErrorMapper) -> None:
        self.executor = ThreadPoolExecutor(max_threads, thread_name_prefix=f"thunder-{name}")
        self._map_error = map_error

    async def run(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the pool; its errors come back mapped (``what`` names the action)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
        except Exception as exc:
            raise self._map_error(exc, what) from exc

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
