"""The gateway's HTTP side: create_app(settings) builds the FastAPI app; uvicorn runs it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy.exc import SQLAlchemyError

import app as herd
from app.admin.api import admin_router
from app.config import Settings
from app.db.database import Database
from app.embeddings_api import EmbeddingRequest
from app.gateway.body_limit import BodyLimit
from app.gateway.errors import database_unavailable, unauthorized, unknown_model
from app.gateway.feedback import UnknownResponseError
from app.gateway.keys import hash_key
from app.gateway.model_info import describe_alias
from app.gateway.replies import CHAT
from app.gateway.runtime import GatewayRuntime, database_url
from app.gateway.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse
from app.openai_api.bodies import body_openapi, openapi_components, read_body
from app.openai_api.errors import ApiError, install_error_handlers
from app.openai_api.schemas import ChatCompletionRequest, CompletionRequest

logger = logging.getLogger(__name__)

# Response ids are request UUIDs; accept them with an OpenAI-style prefix too.
ID_PREFIXES = ("chatcmpl-", "cmpl-")


def _runtime(request: Request) -> GatewayRuntime:
    runtime: GatewayRuntime = request.app.state.runtime
    return runtime


async def authenticate(request: Request) -> int | None:
    """The id of the caller's API key; None when keys are not required and none was sent.

    Checked against the hashes loaded with the routing state: no query per request. The key
    itself is never logged or stored. Async although it awaits nothing: FastAPI would run a
    plain function on its thread pool, a thread hop on every call."""
    runtime = _runtime(request)
    snapshot = runtime.routing.snapshot
    if not snapshot.loaded:
        raise ApiError(
            503,
            "the gateway has not reached its database since it started; retry shortly",
            type="service_unavailable",
            code="database_unavailable",
            retry_after_s=runtime.settings.gateway_retry_after_s,
        )
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        key_id = snapshot.key_ids.get(hash_key(token.strip()))
        if key_id is not None:
            return key_id
    if snapshot.keys_exist or runtime.settings.require_api_key:
        runtime.metrics.unauthorized += 1
        raise unauthorized(
            "a valid API key is required: send `Authorization: Bearer <key>` "
            "(operators create keys with `herd keys create NAME`)"
            if not token
            else "the API key is not valid (unknown, revoked or expired)"
        )
    return None


ApiKeyId = Annotated[int | None, Depends(authenticate)]
SESSION_HEADER_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "X-Session-Id",
            "in": "header",
            "required": False,
            "description": "Keeps a conversation on one worker.",
            "schema": {"type": "string"},
        }
    ]
}


# Bad bodies are 400 with the field in error.param, as OpenAI answers them.
INVALID_BODY_OPENAPI: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Invalid request: error.param names the field",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
}


def _parse_response_id(text: str) -> uuid.UUID | None:
    for prefix in ID_PREFIXES:
        text = text.removeprefix(prefix)
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


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

    app.add_middleware(BodyLimit, limit_bytes=settings.gateway_max_body_bytes)

    install_error_handlers(app, "gateway")

    # The completion routes check the key, read the session header and read their body
    # themselves instead of declaring them as FastAPI parameters: solving the dependencies
    # took ~15% of the gateway's CPU per call, the body parameter ~7% more than reading it
    # here (bench/RESULTS.md). OpenAPI still documents header and bodies.
    @app.post(
        "/v1/chat/completions",
        tags=["openai"],
        summary="Chat completion",
        openapi_extra={**SESSION_HEADER_OPENAPI, **body_openapi(ChatCompletionRequest)},
        responses=INVALID_BODY_OPENAPI,
    )
    async def chat_completions(request: Request) -> Response:
        body = await read_body(request, ChatCompletionRequest)
        return await _runtime(request).proxy.complete(
            CHAT,
            body,
            api_key_id=await authenticate(request),
            session_header=request.headers.get("x-session-id"),
        )

    @app.post(
        "/v1/completions",
        tags=["openai"],
        summary="Text completion",
        openapi_extra={**SESSION_HEADER_OPENAPI, **body_openapi(CompletionRequest)},
        responses=INVALID_BODY_OPENAPI,
    )
    async def completions(request: Request) -> Response:
        body = await read_body(request, CompletionRequest)
        return await _runtime(request).proxy.complete(
            "completions",
            body,
            api_key_id=await authenticate(request),
            session_header=request.headers.get("x-session-id"),
        )

    @app.get("/v1/models", tags=["openai"], summary="The aliases served here")
    async def models(request: Request, api_key_id: ApiKeyId) -> dict[str, Any]:
        routes = _runtime(request).routing.snapshot.routes
        return {
            "object": "list",
            "data": [
                {
                    "id": alias,
                    "object": "model",
                    "created": 0,
                    "owned_by": "herd",
                    "versions": [d.model_name for d in route.deployments if d.weight > 0],
                    "live_workers": sum(len(d.workers) for d in route.deployments),
                }
                for alias, route in sorted(routes.items())
                if route.deployments
            ],
        }

    @app.get("/v1/models/{model_id:path}", tags=["openai"], summary="One alias: what it serves")
    async def model(request: Request, model_id: str, api_key_id: ApiKeyId) -> dict[str, Any]:
        runtime = _runtime(request)
        route = runtime.routing.snapshot.routes.get(model_id)
        try:
            found = await asyncio.to_thread(describe_alias, runtime.engine, model_id, route)
        except SQLAlchemyError:
            raise database_unavailable(runtime.settings.gateway_retry_after_s) from None
        if found is None:
            raise unknown_model(model_id)
        return found

    @app.post(
        "/v1/embeddings",
        tags=["openai"],
        summary="Embeddings: one vector per input, from a deployment with embeddings on",
        openapi_extra=body_openapi(EmbeddingRequest),
        responses={400: {"description": "Invalid input, naming `param`"}},
    )
    async def embeddings(request: Request) -> Response:
        api_key_id = await authenticate(request)
        return await _runtime(request).embeddings.handle(
            await request.body(), api_key_id=api_key_id
        )

    @app.post(
        "/v1/feedback",
        tags=["feedback"],
        summary="Rate a response (+1 / -1); a second vote by the same user updates the first",
        response_model=FeedbackResponse,
        responses={
            **INVALID_BODY_OPENAPI,
            404: {"description": "Unknown response id"},
            503: {"description": "Retry"},
        },
    )
    async def feedback(
        request: Request, body: FeedbackRequest, api_key_id: ApiKeyId
    ) -> FeedbackResponse:
        runtime = _runtime(request)
        request_id = _parse_response_id(body.response_id)
        if request_id is None:
            raise ApiError(404, f"no response with id {body.response_id!r}", code="not_found")
        await runtime.log.ensure_written(request_id)
        try:
            row = await asyncio.to_thread(
                runtime.feedback.upsert, request_id, body.rating, body.comment, body.user or ""
            )
        except UnknownResponseError:
            if runtime.log.undelivered_rows:
                # The response may be among the rows still on their way (the database was
                # just away): a retry will find it, a 404 would tell the client to give up.
                raise database_unavailable(runtime.settings.gateway_retry_after_s) from None
            raise ApiError(
                404, f"no response with id {body.response_id!r}", code="not_found"
            ) from None
        except SQLAlchemyError:
            raise database_unavailable(runtime.settings.gateway_retry_after_s) from None
        return FeedbackResponse(
            id=row.id,
            response_id=str(row.request_id),
            rating=row.rating,
            comment=row.comment,
            user=row.user_id or None,
            created_at=row.created_at.isoformat(),
            updated_at=row.updated_at.isoformat(),
        )

    @app.get("/health", tags=["operations"], summary="Is the gateway up, and what it knows")
    async def health(request: Request) -> dict[str, Any]:
        runtime = _runtime(request)
        snapshot = runtime.routing.snapshot
        return {
            "status": "ok",
            "database": "ok" if runtime.routing.database_ok else "unreachable",
            "routing_loaded": snapshot.loaded,
            "routing_age_s": round(time.monotonic() - snapshot.loaded_at, 3)
            if snapshot.loaded
            else None,
            "aliases": sorted(snapshot.routes),
            "live_workers": len(snapshot.live_worker_ids),
            "outstanding_requests": runtime.balancer.total_outstanding(),
            "log_pending_rows": runtime.log.pending_rows,
            "log_spooled_rows": runtime.log.spool.rows,
            # Non-zero only when the database is down and the spool's disk is full as well.
            "log_held_rows": runtime.log.held_rows,
            "log_lost_rows": runtime.log.lost_rows,
            "spool_error": runtime.log.spool_error,
            # Why the semantic cache is off (no pgvector, say); null when usable.
            "semantic_cache_off_reason": runtime.semantic.off_reason,
        }

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics(request: Request) -> PlainTextResponse:
        runtime = _runtime(request)
        return PlainTextResponse(
            runtime.metrics.render(runtime.gauges()),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

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
