"""Runs the pure engine core in scaled real time for the HTTP server.

One asyncio task owns the :class:`EngineCore`. While the core has work it steps it, sleeps
until the step's end on a deadline schedule (``duration_s / time_scale`` after the previous
step's end, so CPU time spent stepping does not add drift), and then hands the step's tokens
to per-request queues: tokens come out when the modeled GPU would have produced them.

Requests and aborts are queued by the HTTP handlers and applied by the task between steps,
so only the task touches the core. The step itself runs in a worker thread: a big batch
costs tens of milliseconds of Python, during which the event loop keeps serving HTTP.

Times reported per request (TTFT, end-to-end) are in *modeled* seconds: the engine's clock,
which advances by step durations while busy and by ``wall seconds x time_scale`` while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from thunder_middleware.twin.engine import EngineCore, StepResult
from thunder_middleware.twin.request import EngineRequest, RequestOutput
from thunder_middleware.twin.stats import EngineStats

logger = logging.getLogger(__name__)

MAX_LAG_S = 0.5
"""Wall seconds the schedule may fall behind (CPU-bound) before it stops catching up."""


@dataclass(frozen=True)
class RequestTiming:
    """A finished request's modeled latencies, for the metrics histograms."""

    ttft_s: float
    e2e_s: float
    num_prompt_tokens: int
    num_generated_tokens: int


@dataclass
class _Tracked:
    queue: asyncio.Queue[RequestOutput | None]
    arrival: float
    first_token: float | None = None


@dataclass
class _Pending:
    adds: list[tuple[EngineRequest, _Tracked]] = field(default_factory=list)
    aborts: list[str] = field(default_factory=list)


class EngineDriver:
    """Steps an :class:`EngineCore` in scaled real time; one per server."""

    def __init__(
        self,
        engine: EngineCore,
        time_scale: float,
        on_finished: Callable[[RequestTiming], None] | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.engine = engine
        self.time_scale = time_scale
        self._on_finished = on_finished
        self._tracked: dict[str, _Tracked] = {}
        self._pending = _Pending()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stats = engine.stats
        # modeled clock anchor: modeled time `_anchor_modeled` at wall time `_anchor_wall`
        self._anchor_modeled = 0.0
        self._anchor_wall = time.monotonic()
        self.num_lag_resets = 0

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="twin-engine-driver")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # ---- requests -----------------------------------------------------------------------

    def modeled_now(self) -> float:
        return self._anchor_modeled + (time.monotonic() - self._anchor_wall) * self.time_scale

    def submit(self, request: EngineRequest) -> asyncio.Queue[RequestOutput | None]:
        """Queue a request for the next step; its outputs arrive on the returned queue,
        the last one with ``finished=True``, or ``None`` if the request was aborted (or,
        never for a validated request, refused by the core)."""
        if request.request_id in self._tracked:
            raise ValueError(f"request id {request.request_id!r} is already running")
        tracked = _Tracked(asyncio.Queue(), self.modeled_now())
        self._tracked[request.request_id] = tracked
        self._pending.adds.append((request, tracked))
        self._wake.set()
        return tracked.queue

    def abort(self, request_id: str) -> None:
        """Drop a request (client gone); its blocks are freed before the next step."""
        tracked = self._tracked.pop(request_id, None)
        if tracked is not None:
            tracked.queue.put_nowait(None)
            self._pending.aborts.append(request_id)
            self._wake.set()

    @property
    def stats(self) -> EngineStats:
        """The core's counters and gauges as of the last step boundary."""
        return self._stats

    @property
    def num_in_flight(self) -> int:
        return len(self._tracked)

    # ---- the loop -----------------------------------------------------------------------

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, _Pending()
        for request_id in pending.aborts:
            self.engine.abort_request(request_id)
        for request, tracked in pending.adds:
            if self._tracked.get(request.request_id) is not tracked:
                continue  # aborted before it reached the engine
            try:
                self.engine.add_request(request)
            except ValueError:
                logger.exception("engine refused request %s", request.request_id)
                del self._tracked[request.request_id]
                tracked.queue.put_nowait(None)
        self._stats = self.engine.stats

    async def _run(self) -> None:
        """Serve busy periods until cancelled. A failing core (a bug) ends the loop like
        vLLM's dead engine: in-flight requests fail at once instead of hanging, and
        ``running`` turns False so ``/health`` answers 503."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._run_busy_period()
        except Exception:
            logger.exception("engine loop failed; failing %d requests", len(self._tracked))
            for request_id in list(self._tracked):
                self.abort(request_id)

    async def _run_busy_period(self) -> None:
        """Step until the core is idle. The first step starts now; each later one starts
        at the previous one's scheduled end, whatever the CPU spent in between."""
        self._anchor_modeled, self._anchor_wall = self.modeled_now(), time.monotonic()
        while True:
            self._apply_pending()
            if not self.engine.has_unfinished_requests():
                return
            result = await asyncio.to_thread(self.engine.step)
            if result.duration_s <= 0.0:
                # nothing schedulable (cannot happen for validated requests): wait for news
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.05)
                self._wake.clear()
                continue
            step_end_modeled = self._anchor_modeled + result.duration_s
            deadline = self._anchor_wall + result.duration_s / self.time_scale
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > MAX_LAG_S:
                deadline = time.monotonic()
                self.num_lag_resets += 1
            self._anchor_modeled, self._anchor_wall = step_end_modeled, deadline
            self._dispatch(result, step_end_modeled)

    def _dispatch(self, result: StepResult, now: float) -> None:
        for output in result.outputs:
            tracked = self._tracked.get(output.request_id)
            if tracked is None:
                continue  # aborted while the step ran
            if tracked.first_token is None:
                tracked.first_token = now
            tracked.queue.put_nowait(output)
            if output.finished:
                del self._tracked[output.request_id]
                if self._on_finished is not None:
                    self._on_finished(
                        RequestTiming(
                            ttft_s=max(0.0, tracked.first_token - tracked.arrival),
                            e2e_s=max(0.0, now - tracked.arrival),
                            num_prompt_tokens=output.num_prompt_tokens,
                            num_generated_tokens=output.num_output_tokens,
                        )
                    )
        self._stats = self.engine.stats
