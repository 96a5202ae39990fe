"""The engine twin's HTTP server: vLLM's OpenAI-compatible surface over the engine core.

``create_twin_app(TwinConfig(...))`` builds a FastAPI app (in-process use, tests);
``thunder-middleware sim`` (:mod:`.cli`) serves it with uvicorn. Routes: ``POST
/v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``,
``GET /version``, ``GET /metrics``, plus vLLM's ``POST /tokenize`` and a twin-only ``GET
/twin/stats`` (the engine stats as JSON, for benchmarks).

Every error is OpenAI JSON (``{"error": {"message", "type", "param", "code"}}``): request
validation errors (FastAPI's 422) are answered 400 as vLLM does, unknown routes 404, and an
unexpected exception 500 with its message but no traceback.

Fault injection, for tests only: a chat or completions body carrying
``"twin_inject_error": <status 500-599>`` is answered with that status and an OpenAI error
body instead of being served, the way a replica fails one request it cannot handle while
``/health`` and ``/metrics`` keep answering. No client sets the field unless it means to (a
real vLLM ignores unknown fields), and nothing else in the twin reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from thunder_middleware import __version__ as package_version
from thunder_middleware.twin.api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    TokenizeRequest,
)
from thunder_middleware.twin.chat_template import render_chat
from thunder_middleware.twin.content import TOOL_BUDGET_RANGE, ContentPlanner
from thunder_middleware.twin.driver import EngineDriver
from thunder_middleware.twin.engine import EngineConfig, EngineCore
from thunder_middleware.twin.metrics import CONTENT_TYPE, CacheConfigInfo, TwinMetrics
from thunder_middleware.twin.profiles import get_model
from thunder_middleware.twin.responses import error_body
from thunder_middleware.twin.roofline import num_blocks_for, roofline_for
from thunder_middleware.twin.serving import ApiError, TwinServing
from thunder_middleware.twin.tokenizer import VOCAB_SIZE, TwinTokenizer

logger = logging.getLogger(__name__)

MODEL_MAX_LEN = {"qwen3-8b": 40_960, "llama-3.1-8b": 131_072, "qwen3-235b-a22b": 40_960}
"""``max_position_embeddings`` of each profile's HF config: vLLM's default model length."""


@dataclass(frozen=True)
class TwinConfig:
    """What ``thunder-middleware sim`` takes; ``None`` means "as vLLM would derive it"."""

    gpu: str = "h100"
    model: str = "qwen3-8b"
    served_model_name: str | None = None
    time_scale: float = 10.0
    num_gpu_blocks: int | None = None
    block_size: int = 16
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    seed: int = 0
    tool_turns: tuple[int, int] = TOOL_BUDGET_RANGE  # tool-call turns per conversation


@dataclass(frozen=True)
class ResolvedTwin:
    config: TwinConfig
    engine_config: EngineConfig
    served_model_name: str

    @property
    def num_blocks(self) -> int:
        return self.engine_config.num_blocks


def resolve(config: TwinConfig) -> ResolvedTwin:
    """Derive block count and model length. Raises ValueError for settings no vLLM
    replica would start with (unknown profile, a model length over the KV capacity)."""
    get_model(config.model)  # ValueError listing the valid names
    if config.block_size < 1 or config.max_num_seqs < 1 or config.max_num_batched_tokens < 1:
        raise ValueError("block_size, max_num_seqs and max_num_batched_tokens must be >= 1")
    if config.time_scale <= 0:
        raise ValueError(f"time_scale must be > 0, got {config.time_scale}")
    num_blocks = config.num_gpu_blocks or num_blocks_for(
        config.gpu, config.model, config.gpu_memory_utilization, config.block_size
    )
    if num_blocks < 2:
        raise ValueError(
            f"num_gpu_blocks must be >= 2 (one is vLLM's null block), got {num_blocks}"
        )
    capacity = (num_blocks - 1) * config.block_size
    if config.max_model_len is None:
        # vLLM refuses to start when the model length exceeds the KV capacity; the twin
        # caps the default instead, so tiny caches (tests) start without extra flags.
        max_model_len = min(MODEL_MAX_LEN.get(config.model, 131_072), capacity)
    else:
        max_model_len = config.max_model_len
        if max_model_len > capacity:
            raise ValueError(
                f"max_model_len ({max_model_len}) is larger than the maximum number of tokens "
                f"that can be stored in KV cache ({capacity}); raise --num-gpu-blocks or lower "
                "--max-model-len"
            )
    engine_config = EngineConfig(
        num_blocks=num_blocks,
        block_size=config.block_size,
        max_num_batched_tokens=config.max_num_batched_tokens,
        max_num_seqs=config.max_num_seqs,
        max_model_len=max_model_len,
        step_model=roofline_for(config.gpu, config.model),
        vocab_size=VOCAB_SIZE,
    )
    return ResolvedTwin(config, engine_config, config.served_model_name or config.model)


INJECT_ERROR_FIELD = "twin_inject_error"
"""The test-only request field that makes the twin fail that one request (module docstring)."""


def _injected_fault(body: ChatCompletionRequest | CompletionRequest) -> None:
    """Raise the error a test asked for with ``twin_inject_error``; nothing when absent."""
    status = (body.model_extra or {}).get(INJECT_ERROR_FIELD)
    if status is None:
        return
    if isinstance(status, bool) or not isinstance(status, int) or not 500 <= status <= 599:
        raise ApiError(f"{INJECT_ERROR_FIELD} must be an HTTP status from 500 to 599",
                       param=INJECT_ERROR_FIELD)
    raise ApiError(f"injected fault ({INJECT_ERROR_FIELD}={status})", status=status,
                   error_type="InternalServerError")


def _error(status: int, message: str, error_type: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, error_type, status, param), status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts: list[str] = []
    param: str | None = None
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(f"invalid JSON body: {reason}".rstrip(": "))
            continue
        location = [str(p) for p in error.get("loc", ()) if p != "body"]
        param = param or (location[0] if location else None)
        where = ".".join(location) or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.error_type, exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error(400, message, "BadRequestError", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "NotFoundError" if exc.status_code == 404 else "BadRequestError"
        return _error(exc.status_code, str(exc.detail), error_type)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return _error(500, f"internal error: {exc}", "InternalServerError")


def create_twin_app(config: TwinConfig | None = None) -> FastAPI:
    """A twin as a FastAPI app; the engine loop runs while the app's lifespan is open."""
    resolved = resolve(config or TwinConfig())
    engine = EngineCore(resolved.engine_config)
    tokenizer = TwinTokenizer()
    planner = ContentPlanner(tokenizer, resolved.config.seed, resolved.config.tool_turns)
    cache_info = CacheConfigInfo(
        block_size=resolved.engine_config.block_size,
        num_gpu_blocks=resolved.num_blocks,
        gpu_memory_utilization=resolved.config.gpu_memory_utilization,
    )
    metrics = TwinMetrics(lambda: driver.stats, resolved.served_model_name, cache_info)
    driver = EngineDriver(engine, resolved.config.time_scale, on_finished=metrics.observe)
    max_model_len = resolved.engine_config.max_model_len
    serving = TwinServing(driver, planner, resolved.served_model_name, max_model_len)
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        driver.start()
        logger.info(
            "engine twin: %s on %s, %d blocks x %d tokens, max_model_len %d, time scale %g",
            resolved.config.model,
            resolved.config.gpu,
            resolved.num_blocks,
            resolved.engine_config.block_size,
            max_model_len,
            resolved.config.time_scale,
        )
        try:
            yield
        finally:
            await driver.stop()

    app = FastAPI(
        title="thunder-middleware engine twin", version=package_version, lifespan=lifespan
    )
    app.state.twin = resolved
    app.state.driver = driver
    _install_error_handlers(app)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, raw: Request) -> Any:
        _injected_fault(body)
        return await serving.chat(body, raw)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, raw: Request) -> Any:
        _injected_fault(body)
        return await serving.completions(body, raw)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = ModelCard(
            id=resolved.served_model_name,
            created=started,
            root=resolved.config.model,
            max_model_len=max_model_len,
        )
        return {"object": "list", "data": [card.model_dump()]}

    @app.get("/health")
    async def health() -> Response:
        if not driver.running:
            return _error(503, "engine loop is not running", "ServiceUnavailableError")
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": package_version, "engine": "thunder-middleware engine twin"}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        if body.messages is not None:
            messages = [m.model_dump(exclude_none=True) for m in body.messages]
            tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
            text = render_chat(
                messages, tools=tools or None, add_generation_prompt=body.add_generation_prompt
            )
        elif body.prompt is not None:
            text = body.prompt
        else:
            raise ApiError("either `prompt` or `messages` is required", param="prompt")
        tokens = tokenizer.encode(text)
        return {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens}

    @app.get("/twin/stats")
    async def twin_stats() -> dict[str, Any]:
        stats = dataclasses.asdict(driver.stats)
        stats["num_in_flight"] = driver.num_in_flight
        stats["max_model_len"] = max_model_len
        stats["served_model_name"] = resolved.served_model_name
        return stats

    return app
