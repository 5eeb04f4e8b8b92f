"""The worker's HTTP API: OpenAI-compatible completions around one engine, plus /health and
/metrics. Built by create_app; all state lives in the objects handed to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from app.config import Settings
from app.engine.errors import BadRequest, EngineError, GenerationFailed, QueueFull
from app.engine.events import Finished, TextDelta
from app.engine.protocol import Engine, Generation
from app.engine.requests import GenerationRequest
from app.openai_errors import error_body
from app.worker.embeddings import embed_route
from app.worker.errors import ApiError, from_engine_error, install_error_handlers
from app.worker.metrics import WorkerMetrics
from app.worker.openai_format import SSE_DONE, ChatFormat, ResponseFormat, TextFormat, sse
from app.worker.schemas import ChatCompletionBody, CompletionBody
from app.worker.state import WorkerState

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


async def _cancel_on_disconnect(request: Request, generation: Generation) -> None:
    """Wait for the client to go away, then cancel its generation (frees the slot)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            generation.cancel()
            return


class CompletionService:
    """Submits requests to the engine and shapes the answers; counts what happened."""

    def __init__(self, state: WorkerState, metrics: WorkerMetrics) -> None:
        self.state = state
        self.metrics = metrics

    def engine(self) -> Engine:
        engine = self.state.serving
        if engine is None:
            status = self.state.status
            detail = f": {self.state.error}" if self.state.error else ""
            raise ApiError(
                503,
                f"the model is {status}{detail}",
                "unavailable_error",
                f"model_{status}",
                headers={"Retry-After": "1"} if status == "loading" else None,
            )
        return engine

    async def serve(
        self,
        request: Request,
        endpoint: str,
        build: GenerationRequest | ValueError,
        stream: bool,
        fmt: ResponseFormat,
    ) -> Response:
        if isinstance(build, ValueError):
            self.metrics.count_request(endpoint, "invalid")
            raise ApiError(400, str(build))
        engine = self.engine()
        try:
            generation = await engine.submit(build)
        except QueueFull as exc:
            self.metrics.count_request(endpoint, "rejected")
            raise from_engine_error(exc) from exc
        except BadRequest as exc:
            self.metrics.count_request(endpoint, "invalid")
            raise from_engine_error(exc) from exc
        except EngineError as exc:
            self.metrics.count_request(endpoint, "error")
            raise from_engine_error(exc) from exc
        if stream:
            return StreamingResponse(
                self._stream(endpoint, generation, fmt),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._whole(request, endpoint, generation, fmt)

    async def _whole(
        self, request: Request, endpoint: str, generation: Generation, fmt: ResponseFormat
    ) -> Response:
        watcher = asyncio.create_task(_cancel_on_disconnect(request, generation))
        texts: list[str] = []
        finished: Finished | None = None
        try:
            async for event in generation.events():
                if isinstance(event, TextDelta):
                    texts.append(event.text)
                else:
                    finished = event
        except GenerationFailed as exc:
            self.metrics.count_request(endpoint, "error")
            raise from_engine_error(exc) from exc
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            generation.cancel()
        assert finished is not None
        if finished.finish_reason == "cancelled":
            self.metrics.count_request(endpoint, "cancelled")
            return JSONResponse(error_body("request cancelled", "cancelled"), 499)
        self.metrics.count_request(endpoint, "ok")
        self.metrics.observe(finished)
        return JSONResponse(fmt.whole("".join(texts), finished))

    async def _stream(
        self, endpoint: str, generation: Generation, fmt: ResponseFormat
    ) -> AsyncIterator[str]:
        outcome = "cancelled"  # unless the stream reaches its end: the client left
        try:
            first = fmt.first_chunk()
            if first is not None:
                yield sse(first)
            async for event in generation.events():
                if isinstance(event, TextDelta):
                    yield fmt.chunk_sse(event.text)
                    continue
                if event.finish_reason != "cancelled":
                    outcome = "ok"
                    self.metrics.observe(event)
                yield sse(fmt.final_chunk(event))
            yield SSE_DONE
        except GenerationFailed as exc:
            outcome = "error"
            api = from_engine_error(exc)
            yield sse(error_body(api.message, api.type, api.code))
            yield SSE_DONE
        finally:
            # Runs also when the client disconnects and the response task is cancelled.
            generation.cancel()
            self.metrics.count_request(endpoint, outcome)


def create_app(
    settings: Settings, state: WorkerState, metrics: WorkerMetrics | None = None
) -> FastAPI:
    """The worker's ASGI app over state (whose engine appears once the model is loaded)."""
    metrics = metrics or WorkerMetrics()
    service = CompletionService(state, metrics)
    app = FastAPI(title="herd worker", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)

    @app.get("/health")
    def health() -> JSONResponse:
        body = state.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(state), media_type=PROMETHEUS_TEXT)

    @app.get("/v1/models")
    def models() -> JSONResponse:
        engine = state.engine
        meta = None
        if engine is not None:
            info = engine.info
            meta = {
                "n_ctx": info.n_ctx,
                "n_ctx_train": info.n_ctx_train,
                "n_gpu_layers_offloaded": info.n_gpu_layers_offloaded,
            }
        entry = {
            "id": state.alias,
            "object": "model",
            "created": int(state.started_at),
            "owned_by": "herd",
            "meta": meta,
        }
        return JSONResponse({"object": "list", "data": [entry]})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionBody, request: Request) -> Response:
        try:
            build: GenerationRequest | ValueError = body.generation_request()
        except ValueError as exc:
            build = exc
        fmt = ChatFormat(state.alias)
        return await service.serve(request, "chat.completions", build, bool(body.stream), fmt)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request) -> Response:
        try:
            build: GenerationRequest | ValueError = body.generation_request()
        except ValueError as exc:
            build = exc
        fmt = TextFormat(state.alias)
        return await service.serve(request, "completions", build, bool(body.stream), fmt)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await embed_route(request, service)

    app.state.settings = settings
    return app
