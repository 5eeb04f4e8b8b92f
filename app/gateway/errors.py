"""Gateway errors and the one place that turns them into OpenAI-shaped error bodies."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

from app.openai_errors import error_body


class GatewayError(Exception):
    """A call the gateway answers with an error: HTTP status, OpenAI error type and code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code)

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def sse_error(message: str, type: str = "upstream_error", code: str | None = None) -> bytes:
    """An SSE event carrying an error; the openai client raises APIError when it reads one."""
    return b"data: " + json.dumps(error_body(message, type, code)).encode() + b"\n\n"


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, type="authentication_error", code="invalid_api_key")


def unknown_model(alias: str) -> GatewayError:
    return GatewayError(
        404,
        f"the model {alias!r} does not exist; GET /v1/models lists the aliases served here",
        code="model_not_found",
    )


def no_live_worker(alias: str, retry_after_s: int) -> GatewayError:
    return GatewayError(
        503,
        f"no live worker serves {alias!r} right now (none ready with a fresh heartbeat); "
        "check its deployment on the Deployments page",
        type="service_unavailable",
        code="no_live_worker",
        retry_after_s=retry_after_s,
    )


def all_busy(alias: str, retry_after_s: int) -> GatewayError:
    return GatewayError(
        429,
        f"every worker serving {alias!r} is busy and their queues are full; retry shortly",
        type="rate_limit_error",
        code="workers_busy",
        retry_after_s=retry_after_s,
    )


def database_unavailable(retry_after_s: int) -> GatewayError:
    return GatewayError(
        503,
        "the database is unreachable; nothing was stored, retry shortly",
        type="service_unavailable",
        code="database_unavailable",
        retry_after_s=retry_after_s,
    )
