"""The worker's HTTP API: OpenAI-compatible completions and embeddings around one engine,
plus /health and /metrics. Built by create_app; all state lives in the objects handed to it."""

from __future__ import annotations

from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from app.config import Settings
from app.engine.requests import GenerationRequest
from app.openai_api.bodies import read_model
from app.openai_api.completions import CHAT, ChatFormat, TextFormat
from app.openai_api.errors import ApiError, install_error_handlers
from app.openai_api.schemas import ChatCompletionRequest, CompletionRequest
from app.worker.embeddings import embed_route
from app.worker.generation import chat_request, text_request
from app.worker.metrics import WorkerMetrics
from app.worker.priority import request_priority
from app.worker.service import CompletionService
from app.worker.state import WorkerState

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(
    settings: Settings, state: WorkerState, metrics: WorkerMetrics | None = None
) -> FastAPI:
    """The worker's ASGI app over state (whose engine appears once the model is loaded)."""
    metrics = metrics or WorkerMetrics()
    service = CompletionService(state, metrics)
    app = FastAPI(title="herd worker", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app, "worker")

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
    async def chat_completions(request: Request) -> Response:
        # A client calling the worker directly may leave the model out: it serves one.
        body = await read_model(request, ChatCompletionRequest, {"model": state.alias})
        try:
            build: GenerationRequest | ApiError = replace(
                chat_request(body), priority=request_priority(request.headers)
            )
        except ApiError as exc:
            build = exc
        fmt = ChatFormat(state.alias)
        n, stream = body.n or 1, bool(body.stream)
        tools = None
        if not isinstance(build, ApiError) and build.tools is not None and body.tools:
            tools = {t.function.name for t in body.tools}
        return await service.serve(request, CHAT, build, n, stream, fmt, tools)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await read_model(request, CompletionRequest, {"model": state.alias})
        try:
            build: GenerationRequest | ApiError = replace(
                text_request(body), priority=request_priority(request.headers)
            )
        except ApiError as exc:
            build = exc
        fmt = TextFormat(state.alias)
        n, stream = body.n or 1, bool(body.stream)
        return await service.serve(request, "completions", build, n, stream, fmt)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await embed_route(request, service)

    app.state.settings = settings
    return app
