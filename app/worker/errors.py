"""One place that turns every failure into an OpenAI-shaped error body.

{"error": {"message": ..., "type": ..., "code": ...}} with the matching HTTP status.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.engine.errors import (
    BadRequest,
    EngineClosed,
    EngineError,
    GenerationFailed,
    PromptTooLong,
    QueueFull,
)
from app.openai_errors import error_body

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error response: HTTP status, OpenAI error type and code, optional headers."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.headers = headers or {}


def from_engine_error(exc: EngineError) -> ApiError:
    if isinstance(exc, QueueFull):
        return ApiError(
            429,
            str(exc),
            "rate_limit_error",
            "queue_full",
            headers={"Retry-After": str(exc.retry_after_s)},
        )
    if isinstance(exc, PromptTooLong):
        return ApiError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, BadRequest):
        return ApiError(400, str(exc))
    if isinstance(exc, EngineClosed):
        return ApiError(503, str(exc), "unavailable_error", "shutting_down")
    if isinstance(exc, GenerationFailed):
        return ApiError(500, str(exc), "server_error", "generation_failed")
    return ApiError(500, str(exc), "server_error")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {error.get('ctx', {}).get('error', '')}"
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        if not loc and error.get("type") in ("model_attributes_type", "dict_type", "missing"):
            return "the request body must be a JSON object (Content-Type: application/json)"
        parts.append(f"{loc}: {error.get('msg')}" if loc else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(
            error_body(exc.message, exc.type, exc.code), exc.status, headers=exc.headers
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(error_body(_validation_message(exc), "invalid_request_error"), 400)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(
            error_body(str(exc.detail), kind, code),
            exc.status_code,
            headers=dict(exc.headers or {}),
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error: {exc}", "server_error"), 500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
