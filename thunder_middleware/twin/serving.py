"""The OpenAI endpoints' logic: validate, tokenize, plan the reply, run it, answer.

Validation mirrors vLLM's messages and status codes (404 for an unknown model, 400 for a
prompt at or over the model length, ``max_tokens`` out of range, bad ``tool_choice``), so a
client that handles vLLM's errors handles the twin's. Every request the engine receives has
been checked here against the same limits the core enforces, so the core never refuses one.

A client that goes away aborts its engine request (the driver frees its blocks before the
next step), streaming or not: a watcher task listens for ``http.disconnect`` while the
response is produced, like vLLM's ``with_cancellation``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from thunder_middleware.twin.api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
)
from thunder_middleware.twin.chat_template import render_chat
from thunder_middleware.twin.content import (
    ChatRequestView,
    ContentPlanner,
    GenerationLimits,
    ReplyPlan,
)
from thunder_middleware.twin.driver import EngineDriver
from thunder_middleware.twin.request import EngineRequest, RequestOutput
from thunder_middleware.twin.responses import (
    SSE_DONE,
    ChunkWriter,
    Usage,
    chat_completion,
    new_id,
    text_completion,
)
from thunder_middleware.twin.tokenizer import TwinTokenizer

OFFLOAD_CHARS = 32_768
"""Prompts longer than this are tokenized in a worker thread, off the event loop."""


class ApiError(Exception):
    """An error answered as OpenAI JSON; ``status`` 400 unless said otherwise."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        error_type: str = "BadRequestError",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.param = param


@dataclass
class _Run:
    """One engine request of a response: its plan and what came back so far."""

    request_id: str
    plan: ReplyPlan
    queue: asyncio.Queue[RequestOutput | None]
    num_prompt_tokens: int
    num_generated: int = 0
    num_cached: int = 0
    aborted: bool = False
    done: bool = False

    def take(self, output: RequestOutput | None) -> list[int]:
        """Record one driver item; returns the plan positions of the new tokens."""
        if output is None:
            self.aborted = self.done = True
            return []
        start = self.num_generated
        self.num_generated += len(output.new_token_ids)
        self.num_cached = output.num_cached_tokens
        self.done = output.finished
        return list(range(start, self.num_generated))


@dataclass
class _Response:
    response_id: str
    runs: list[_Run] = field(default_factory=list)

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=sum(r.num_prompt_tokens for r in self.runs),
            completion_tokens=sum(r.num_generated for r in self.runs),
            cached_tokens=sum(max(r.num_cached, 0) for r in self.runs),
        )


class TwinServing:
    """The chat and completions endpoints over one driver; one instance per app."""

    def __init__(
        self,
        driver: EngineDriver,
        planner: ContentPlanner,
        served_model_name: str,
        max_model_len: int,
    ) -> None:
        self.driver = driver
        self.planner = planner
        self.tokenizer: TwinTokenizer = planner.tokenizer
        self.served_model_name = served_model_name
        self.max_model_len = max_model_len

    # ---- validation ---------------------------------------------------------------------

    def _check_request(self, body: SamplingFields) -> None:
        if body.model is not None and body.model != self.served_model_name:
            raise ApiError(
                f"The model `{body.model}` does not exist.",
                status=404,
                error_type="NotFoundError",
                param="model",
            )
        if body.n is not None and body.n != 1:
            raise ApiError("the engine twin supports n=1 only", param="n")

    def _limits(
        self, num_prompt: int, body: ChatCompletionRequest | CompletionRequest
    ) -> GenerationLimits:
        max_len = self.max_model_len
        if num_prompt >= max_len:
            raise ApiError(
                f"This model's maximum context length is {max_len} tokens. However, your "
                f"request has {num_prompt} input tokens. Please reduce the length of the "
                "input messages.",
                param="input_tokens",
            )
        requested = body.requested_max_tokens
        if requested is not None and requested < 1:
            raise ApiError(f"max_tokens must be at least 1, got {requested}.", param="max_tokens")
        if requested is not None and num_prompt + requested > max_len:
            raise ApiError(
                f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This "
                f"model's maximum context length is {max_len} tokens and your request has "
                f"{num_prompt} input tokens ({requested} > {max_len} - {num_prompt}).",
                param="max_tokens",
            )
        max_tokens = requested if requested is not None else max_len - num_prompt
        if body.min_tokens < 0:
            raise ApiError(
                f"min_tokens must be greater than or equal to 0, got {body.min_tokens}.",
                param="min_tokens",
            )
        if body.min_tokens > max_tokens:
            raise ApiError(
                f"min_tokens must be less than or equal to max_tokens={max_tokens}, got "
                f"{body.min_tokens}.",
                param="min_tokens",
            )
        return GenerationLimits(max_tokens, body.min_tokens, body.ignore_eos)

    @staticmethod
    def _tool_choice(body: ChatCompletionRequest) -> Any:
        choice = body.tool_choice
        names = {tool.function.name for tool in body.tools or []}
        if choice is None:
            return "none"
        forced = choice == "required" or not isinstance(choice, str)
        if forced and not names:
            raise ApiError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
        if isinstance(choice, str):
            return choice
        if choice.function.name not in names:
            raise ApiError(
                f"Tool '{choice.function.name}' has not been passed in `tools`.",
                param="tool_choice",
            )
        return choice.model_dump()

    async def _encode(self, text: str) -> list[int]:
        if len(text) > OFFLOAD_CHARS:
            return await asyncio.to_thread(self.tokenizer.encode, text)
        return self.tokenizer.encode(text)

    def _prompts(self, prompt: Any) -> list[str | list[int]]:
        """A completions ``prompt`` (a string, strings, token ids, lists of token ids) as
        a list of prompts, token ids checked against the vocabulary as vLLM does."""
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise ApiError("prompt must not be empty", param="prompt")
        prompts = [list(prompt)] if all(isinstance(item, int) for item in prompt) else prompt
        for item in prompts:
            if isinstance(item, list):
                if not item:
                    raise ApiError("prompt token ids must not be empty", param="prompt")
                bad = [t for t in item if not 0 <= t < self.tokenizer.vocab_size]
                if bad:
                    raise ApiError(f"Token id {bad[0]} is out of vocabulary", param="prompt")
        return list(prompts)

    # ---- endpoints ----------------------------------------------------------------------

    async def chat(self, body: ChatCompletionRequest, raw: Request) -> Any:
        self._check_request(body)
        if not body.messages:
            raise ApiError("`messages` must contain at least one message.", param="messages")
        tool_choice = self._tool_choice(body)
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
        prompt_ids = await self._encode(render_chat(messages, tools=tools or None))
        limits = self._limits(len(prompt_ids), body)
        view = ChatRequestView(messages, tools, tool_choice)
        plan = self.planner.plan_chat(prompt_ids, view, limits, body.seed)
        response = _Response(new_id("chatcmpl"))
        self._submit(response, response.response_id, prompt_ids, plan)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            return self._streaming(raw, response, self._chat_events(response, include_usage))
        await self._wait(raw, response)
        run = response.runs[0]
        return JSONResponse(
            chat_completion(
                response.response_id,
                self.served_model_name,
                run.plan.content,
                run.plan.tool_calls,
                run.plan.finish_reason,
                response.usage(),
            )
        )

    async def completions(self, body: CompletionRequest, raw: Request) -> Any:
        self._check_request(body)
        prompts = self._prompts(body.prompt)
        encoded = [p if isinstance(p, list) else await self._encode(p) for p in prompts]
        if any(not ids for ids in encoded):
            raise ApiError("prompt must not be empty", param="prompt")
        limits = [self._limits(len(ids), body) for ids in encoded]
        response = _Response(new_id("cmpl"))
        for index, (ids, limit) in enumerate(zip(encoded, limits, strict=True)):
            plan = self.planner.plan_completion(ids, limit, body.seed)
            self._submit(response, f"{response.response_id}-{index}", ids, plan)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            return self._streaming(raw, response, self._completion_events(response, include_usage))
        await self._wait(raw, response)
        choices = [(r.plan.content or "", r.plan.finish_reason) for r in response.runs]
        return JSONResponse(
            text_completion(response.response_id, self.served_model_name, choices, response.usage())
        )

    # ---- running ------------------------------------------------------------------------

    def _submit(
        self, response: _Response, request_id: str, prompt_ids: list[int], plan: ReplyPlan
    ) -> None:
        if not self.driver.running:
            raise ApiError(
                "the engine is not running", status=503, error_type="ServiceUnavailableError"
            )
        request = EngineRequest(request_id, prompt_ids, len(plan.token_ids), plan.token_ids)
        queue = self.driver.submit(request)
        response.runs.append(_Run(request_id, plan, queue, len(prompt_ids)))

    def _abort(self, response: _Response) -> None:
        for run in response.runs:
            if not run.done:
                self.driver.abort(run.request_id)

    @contextlib.asynccontextmanager
    async def _abort_on_disconnect(self, raw: Request, response: _Response) -> AsyncIterator[None]:
        async def watch() -> None:
            while (await raw.receive())["type"] != "http.disconnect":
                pass
            self._abort(response)

        watcher = asyncio.create_task(watch())
        try:
            yield
        finally:
            watcher.cancel()
            self._abort(response)  # no-op for finished runs

    async def _wait(self, raw: Request, response: _Response) -> None:
        """Run every engine request to the end. An aborted run means the client left (the
        error goes nowhere) or, never for a validated request, the core refused it."""
        async with self._abort_on_disconnect(raw, response):
            for run in response.runs:
                while not run.done:
                    run.take(await run.queue.get())
        if any(run.aborted for run in response.runs):
            raise ApiError("the request was aborted", status=500, error_type="InternalServerError")

    def _streaming(
        self, raw: Request, response: _Response, events: AsyncIterator[str]
    ) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            async with self._abort_on_disconnect(raw, response):
                async for event in events:
                    yield event

        return StreamingResponse(body(), media_type="text/event-stream")

    async def _merged(self, response: _Response) -> AsyncIterator[tuple[int, list[int], bool]]:
        """(run index, new plan positions, finished) as the runs' tokens arrive."""
        merged: asyncio.Queue[tuple[int, RequestOutput | None]] = asyncio.Queue()

        async def forward(index: int, run: _Run) -> None:
            while True:
                item = await run.queue.get()
                await merged.put((index, item))
                if item is None or item.finished:
                    return

        if len(response.runs) == 1:
            run = response.runs[0]
            while not run.done:
                positions = run.take(await run.queue.get())
                # a consumer that fell behind sends what piled up as one chunk (as vLLM's
                # output collector merges deltas), instead of falling further behind
                while not run.done and not run.queue.empty():
                    positions += run.take(run.queue.get_nowait())
                if run.aborted:
                    return
                yield 0, positions, run.done
            return
        forwarders = [asyncio.create_task(forward(i, r)) for i, r in enumerate(response.runs)]
        try:
            while not all(run.done for run in response.runs):
                index, item = await merged.get()
                run = response.runs[index]
                positions = run.take(item)
                if run.aborted:
                    return
                yield index, positions, run.done
        finally:
            for task in forwarders:
                task.cancel()

    async def _chat_events(self, response: _Response, include_usage: bool) -> AsyncIterator[str]:
        writer = ChunkWriter(response.response_id, self.served_model_name, chat=True)
        yield writer.role()
        plan = response.runs[0].plan
        async for _, positions, finished in self._merged(response):
            chunk = writer.chat_delta(
                [plan.pieces[i] for i in positions], plan.finish_reason if finished else None
            )
            if chunk is not None:
                yield chunk
        if response.runs[0].aborted:
            return
        if include_usage:
            yield writer.usage(response.usage())
        yield SSE_DONE

    async def _completion_events(
        self, response: _Response, include_usage: bool
    ) -> AsyncIterator[str]:
        writer = ChunkWriter(response.response_id, self.served_model_name, chat=False)
        async for index, positions, finished in self._merged(response):
            plan = response.runs[index].plan
            text = "".join(plan.pieces[i].text for i in positions)
            yield writer.text_delta(index, text, plan.finish_reason if finished else None)
        if any(run.aborted for run in response.runs):
            return
        if include_usage:
            yield writer.usage(response.usage())
        yield SSE_DONE
