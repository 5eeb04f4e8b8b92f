"""The one error shape and type of the OpenAI surface and the one installer of its handlers.

Every failure leaves as {"error": {"message", "type", "param", "code"}} (ErrorResponse, which
the gateway's OpenAPI document also describes). A bad request is 400 with `param` naming the
field, as OpenAI answers it. An unexpected exception is logged with an error id and answered
with that id only: its text may hold paths, prompts or secrets.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

INVALID = "invalid_request_error"
# The type of every 503: the server cannot answer now, and a retry may succeed.
UNAVAILABLE = "service_unavailable"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the API answers with, in OpenAI's shape."""

    error: ErrorDetail


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """{"error": {...}}, as the OpenAI API and its clients expect it; param names the request
    field at fault (as OpenAI writes it: "messages.[0].content")."""
    detail = ErrorDetail(message=message, type=type, param=param, code=code)
    return ErrorResponse(error=detail).model_dump()


class ApiError(Exception):
    """An answer with an error: HTTP status, OpenAI error type, code and param, headers."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID,
        code: str | None = None,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.retry_after_s = retry_after_s
        if retry_after_s is not None:
            self.headers["Retry-After"] = str(retry_after_s)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid_value(message: str, param: str | None = None) -> ApiError:
    """400 for a request the server cannot serve as given; param names the field at fault."""
    return ApiError(400, message, code="invalid_value", param=param)


def bad_param(param: str, message: str, code: str | None = "invalid_value") -> ApiError:
    """400 for a request field the server cannot honour as given, the field named first."""
    return ApiError(400, f"{param}: {message}", code=code, param=param)


def unavailable(message: str, code: str, retry_after_s: int | None = None) -> ApiError:
    """503: the server cannot answer now (a model loading, no live worker, the database out
    of reach); retry_after_s, when known, tells the client when to try again."""
    return ApiError(503, message, UNAVAILABLE, code, retry_after_s=retry_after_s)


def param_path(loc: Sequence[int | str]) -> str:
    """A pydantic location as OpenAI names a param: ("messages", 0, "content") ->
    "messages.[0].content"; the leading "body" FastAPI adds is dropped."""
    parts = [p for p in loc if p != "body"]
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in parts)


def _readable(msg: str) -> str:
    # pydantic prefixes messages of ValueErrors raised in validators; clients need the reason.
    return msg.removeprefix("Value error, ")


def validation_error(errors: Sequence[Any]) -> ApiError:
    """400 for a body that failed validation; param is the first field at fault."""
    params: list[str] = []
    problems: list[str] = []
    for error in errors:
        kind = error.get("type")
        if kind == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            return ApiError(
                400, f"the request body is not valid JSON: {reason}", code="invalid_json"
            )
        loc = [p for p in error.get("loc", ()) if p != "body"]
        if not loc and kind in ("model_attributes_type", "dict_type", "model_type", "missing"):
            return ApiError(
                400,
                "the request body must be a JSON object (Content-Type: application/json)",
                code="invalid_body",
            )
        # Union members each report their failure; the path up to the member is the field.
        loc = [p for p in loc if not _is_union_tag(p)]
        param = param_path(loc)
        if param not in params:
            params.append(param)
            problems.append(
                f"{param}: {_readable(str(error.get('msg')))}" if param else str(error.get("msg"))
            )
    message = "; ".join(problems) or "invalid request"
    return ApiError(400, message, code="invalid_body", param=params[0] if params else None)


def _is_union_tag(part: int | str) -> bool:
    # pydantic names a union member by its type ("str", "list[ContentPart]", "function-after[...]").
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "none")
        or "[" in part
        or part.startswith(("list", "dict", "literal", "constrained"))
    )


def install_error_handlers(app: FastAPI, server: str) -> None:
    """OpenAI-shaped answers for every error raised in app's routes; server names the
    process ("gateway", "worker") in the message of an unexpected error."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error(exc.errors()).response()

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's own errors (unknown path, wrong method, an unparsable body, 413).
        assert isinstance(exc, HTTPException)
        message = str(exc.detail)
        if isinstance(exc.__cause__, UnicodeDecodeError):
            message = f"the request body is not valid UTF-8: {exc.__cause__.reason}"
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code
        )
        kind = INVALID if exc.status_code < 500 else "server_error"
        return JSONResponse(
            error_body(message, kind, code), exc.status_code, headers=dict(exc.headers or {})
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        logger.exception(
            "unhandled error on %s %s (error id %s)", request.method, request.url.path, error_id
        )
        message = f"internal error in the {server} (error id {error_id}; details in its log)"
        return JSONResponse(error_body(message, "server_error", "internal_error"), 500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
