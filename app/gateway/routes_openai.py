"""The OpenAI routes of the gateway: chat and text completions, models, embeddings."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError

from app.gateway.batch_marking import Caller
from app.gateway.errors import database_unavailable, unknown_model
from app.gateway.model_info import describe_alias
from app.gateway.request_context import (
    SESSION_HEADER_OPENAPI,
    ApiKeyId,
    authenticate_call,
    runtime_of,
)
from app.openai_api.bodies import body_openapi, read_body
from app.openai_api.completions import CHAT
from app.openai_api.embeddings import EmbeddingRequest
from app.openai_api.errors import ApiError
from app.openai_api.schemas import MAX_CLIENT_NAME, ChatCompletionRequest, CompletionRequest

# Bad bodies are 400 with the field in error.param, as OpenAI answers them.
INVALID_BODY_OPENAPI: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Invalid request: error.param names the field",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
}


def _session_header(request: Request) -> str | None:
    """X-Session-Id, bounded like every client string that reaches rows and logs."""
    value = request.headers.get("x-session-id")
    if value is not None and len(value) > MAX_CLIENT_NAME:
        raise ApiError(
            400,
            f"the X-Session-Id header is longer than {MAX_CLIENT_NAME} characters",
            code="invalid_value",
        )
    return value


def _once_by(caller: Caller, body: dict[str, Any]) -> int | None:
    """The batch line number a call is answered once by (app/gateway/batch_lines.py); None
    for a stream, which no batch line is (the batch file refuses it) and none replays."""
    return None if body.get("stream") else caller.batch_line


async def _complete(request: Request, endpoint: str, body: dict[str, Any]) -> Response:
    """A completion call, answered once per batch line (app/gateway/batch_lines.py)."""
    caller = await authenticate_call(request)
    runtime, session = runtime_of(request), _session_header(request)
    return await runtime.batch_lines.once(
        caller.batch_id,
        _once_by(caller, body),
        lambda: runtime.proxy.complete(
            endpoint,
            body,
            api_key_id=caller.api_key_id,
            session_header=session,
            batch_id=caller.batch_id,
            batch_line=caller.batch_line,
        ),
    )


# Route handlers carry no docstring: FastAPI would publish it as the route's description.
# The completion routes check the key, read the session header and read their body
# themselves instead of declaring them as FastAPI parameters: solving the dependencies
# took ~15% of the gateway's CPU per call, the body parameter ~7% more than reading it
# here (bench/RESULTS.md). OpenAPI still documents header and bodies.
async def chat_completions(request: Request) -> Response:
    return await _complete(request, CHAT, await read_body(request, ChatCompletionRequest))


async def completions(request: Request) -> Response:
    return await _complete(request, "completions", await read_body(request, CompletionRequest))


async def models(request: Request, api_key_id: ApiKeyId) -> dict[str, Any]:
    routes = runtime_of(request).routing.snapshot.routes
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


async def model(request: Request, model_id: str, api_key_id: ApiKeyId) -> dict[str, Any]:
    runtime = runtime_of(request)
    route = runtime.routing.snapshot.routes.get(model_id)
    try:
        found = await asyncio.to_thread(describe_alias, runtime.engine, model_id, route)
    except SQLAlchemyError:
        raise database_unavailable(runtime.settings.gateway_retry_after_s) from None
    if found is None:
        raise unknown_model(model_id)
    return found


async def embeddings(request: Request) -> Response:
    caller = await authenticate_call(request)
    runtime, raw = runtime_of(request), await request.body()
    return await runtime.batch_lines.once(
        caller.batch_id,
        caller.batch_line,
        lambda: runtime.embeddings.handle(
            raw,
            api_key_id=caller.api_key_id,
            batch_id=caller.batch_id,
            batch_line=caller.batch_line,
        ),
    )


# The completion routes' paths and handlers: the router registers them (for OpenAPI and
# every other method), the app's completion lane (app/gateway/completion_lane.py) runs them.
CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"


def completion_endpoints() -> dict[str, Callable[[Request], Awaitable[Response]]]:
    """POST path -> handler of the completion calls, the gateway's hot path."""
    return {CHAT_PATH: chat_completions, COMPLETIONS_PATH: completions}


def openai_router() -> APIRouter:
    """/v1/chat/completions, /v1/completions, /v1/models[/{id}] and /v1/embeddings."""
    router = APIRouter(tags=["openai"])
    router.add_api_route(
        CHAT_PATH,
        chat_completions,
        methods=["POST"],
        summary="Chat completion",
        openapi_extra={**SESSION_HEADER_OPENAPI, **body_openapi(ChatCompletionRequest)},
        responses=INVALID_BODY_OPENAPI,
    )
    router.add_api_route(
        COMPLETIONS_PATH,
        completions,
        methods=["POST"],
        summary="Text completion",
        openapi_extra={**SESSION_HEADER_OPENAPI, **body_openapi(CompletionRequest)},
        responses=INVALID_BODY_OPENAPI,
    )
    router.add_api_route("/v1/models", models, summary="The aliases served here")
    router.add_api_route("/v1/models/{model_id:path}", model, summary="One alias: what it serves")
    router.add_api_route(
        "/v1/embeddings",
        embeddings,
        methods=["POST"],
        summary="Embeddings: one vector per input, from a deployment with embeddings on",
        openapi_extra=body_openapi(EmbeddingRequest),
        responses={400: {"description": "Invalid input, naming `param`"}},
    )
    return router
