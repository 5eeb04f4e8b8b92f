"""The gateway's HTTP side: create_app(settings) builds the FastAPI app; uvicorn runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

import app as herd
from app.admin.api import admin_router
from app.config import Settings
from app.db.database import Database
from app.embeddings_api import EmbeddingRequest
from app.gateway.body_limit import BodyLimit
from app.gateway.routes_batches import batches_router
from app.gateway.routes_feedback import feedback_router
from app.gateway.routes_openai import openai_router
from app.gateway.routes_operations import operations_router
from app.gateway.runtime import GatewayRuntime, database_url
from app.gateway.schemas import ErrorResponse
from app.openai_api.bodies import openapi_components
from app.openai_api.errors import install_error_handlers
from app.openai_api.schemas import ChatCompletionRequest, CompletionRequest


def create_app(settings: Settings, database: Database | None = None) -> FastAPI:
    """The gateway app. With database None the app opens (and closes) its own."""

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

    # File uploads have their own, larger limit (HERD_BATCH_FILE_MAX_BYTES), counted as they
    # stream to disk.
    app.add_middleware(
        BodyLimit, limit_bytes=settings.gateway_max_body_bytes, exempt_paths=("/v1/files",)
    )

    install_error_handlers(app, "gateway")

    # The completion routes come first: they are the calls that must stay fast.
    app.include_router(openai_router())
    app.include_router(feedback_router())
    app.include_router(batches_router())
    app.include_router(operations_router())
    # The admin API shares the listener but not the /v1 path: its routes come after the
    # OpenAI ones and never run on a completion call.
    app.include_router(admin_router())

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # The completion bodies are no route parameters, so FastAPI does not collect their
        # schemas: add them where body_openapi's references point.
        fresh = app.openapi_schema is None
        schema = default_openapi()  # FastAPI keeps it after the first call
        if fresh:
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(
                openapi_components(
                    ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ErrorResponse
                )
            )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
