"""The gateway's HTTP side: create_app(settings) builds the FastAPI app; uvicorn runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

import app as herd
from app.config import Settings
from app.db.database import Database
from app.gateway.body_limit import BodyLimit
from app.gateway.completion_lane import CompletionLane
from app.gateway.errors import database_error
from app.gateway.routes_batches import batches_router
from app.gateway.routes_feedback import feedback_router
from app.gateway.routes_openai import completion_endpoints, openai_router
from app.gateway.routes_operations import operations_router
from app.gateway.runtime import GatewayRuntime, database_url
from app.gateway.schemas import BatchCreateRequest
from app.openai_api.bodies import openapi_components
from app.openai_api.embeddings import EmbeddingRequest
from app.openai_api.errors import ApiError, ErrorResponse, install_error_handlers
from app.openai_api.schemas import ChatCompletionRequest, CompletionRequest


def create_app(
    settings: Settings,
    database: Database | None = None,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The gateway app. With database None the app opens (and closes) its own. routers are
    mounted after the gateway's own (the admin API, by whoever assembles the process): they
    share the listener, never a /v1 path, and never run on a completion call."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url, opened = await asyncio.to_thread(database_url, settings, database)
        runtime = GatewayRuntime(settings, url)
        await runtime.start()
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.stop()
            if opened is not None:
                opened.close()

    app = FastAPI(
        title="Herd gateway",
        version=herd.__version__,
        description=(
            "OpenAI-compatible API in front of Herd's llama.cpp workers: chat and text "
            "completions routed by alias, feedback on responses, metrics."
        ),
        lifespan=lifespan,
    )

    # The completion calls skip the router and the route machinery (inside BodyLimit, so
    # the body limit holds for them as before).
    app.add_middleware(
        CompletionLane,
        endpoints=completion_endpoints(),
        exception_handlers=app.exception_handlers,
    )
    # File uploads have their own, larger limit (HERD_BATCH_FILE_MAX_BYTES), counted as they
    # stream to disk.
    app.add_middleware(
        BodyLimit, limit_bytes=settings.gateway_max_body_bytes, exempt_paths=("/v1/files",)
    )

    install_error_handlers(app, "gateway")
    app.add_exception_handler(SQLAlchemyError, _database_failed(settings))
    app.add_exception_handler(UnicodeEncodeError, _unencodable)

    # The completion routes come first: they are the calls that must stay fast.
    app.include_router(openai_router())
    app.include_router(feedback_router())
    app.include_router(batches_router())
    app.include_router(operations_router())
    for router in routers:
        app.include_router(router)
    _describe_bodies(app)
    return app


def _database_failed(settings: Settings) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def database_failed(request: Request, exc: Exception) -> JSONResponse:
        # A database error no route turned into an answer (the admin API's, say), by its
        # real cause: never a 503 "unreachable" for a value PostgreSQL refused.
        return database_error(exc, settings.gateway_retry_after_s).response()

    return database_failed


async def _unencodable(request: Request, exc: Exception) -> JSONResponse:
    # A lone surrogate that got past the checks at the door, met where it is encoded.
    assert isinstance(exc, UnicodeEncodeError)
    return ApiError(
        400, f"the request holds text that is not valid Unicode ({exc.reason})",
        code="invalid_text",
    ).response()  # fmt: skip


def _describe_bodies(app: FastAPI) -> None:
    """Add the completion bodies' schemas to the app's OpenAPI document: they are no route
    parameters, so FastAPI does not collect them, yet body_openapi's references point there."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = default_openapi()  # FastAPI keeps it after the first call
        if fresh:
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(
                openapi_components(
                    ChatCompletionRequest,
                    CompletionRequest,
                    EmbeddingRequest,
                    BatchCreateRequest,
                    ErrorResponse,
                )
            )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
