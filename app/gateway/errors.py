"""The errors the gateway answers with, built on the OpenAI surface's one error type."""

from __future__ import annotations

import json

from app.openai_api.errors import ApiError
from app.openai_errors import error_body


def sse_error(message: str, type: str = "upstream_error", code: str | None = None) -> bytes:
    """An SSE event carrying an error; the openai client raises APIError when it reads one."""
    return b"data: " + json.dumps(error_body(message, type, code)).encode() + b"\n\n"


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, type="authentication_error", code="invalid_api_key")


def unknown_model(alias: str) -> ApiError:
    return ApiError(
        404,
        f"the model {alias!r} does not exist; GET /v1/models lists the aliases served here",
        code="model_not_found",
    )


def no_live_worker(alias: str, retry_after_s: int) -> ApiError:
    return ApiError(
        503,
        f"no live worker serves {alias!r} right now (none ready with a fresh heartbeat); "
        "check its deployment on the Deployments page",
        type="service_unavailable",
        code="no_live_worker",
        retry_after_s=retry_after_s,
    )


def all_busy(alias: str, retry_after_s: int) -> ApiError:
    return ApiError(
        429,
        f"every worker serving {alias!r} is busy and their queues are full; retry shortly",
        type="rate_limit_error",
        code="workers_busy",
        retry_after_s=retry_after_s,
    )


def database_unavailable(retry_after_s: int) -> ApiError:
    return ApiError(
        503,
        "the database is unreachable; nothing was stored, retry shortly",
        type="service_unavailable",
        code="database_unavailable",
        retry_after_s=retry_after_s,
    )
