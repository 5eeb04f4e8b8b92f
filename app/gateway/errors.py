"""The errors the gateway answers with, built on the OpenAI surface's one error type."""

from __future__ import annotations

import logging
import uuid

import psycopg
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.openai_api.errors import ApiError, error_body, unavailable
from app.openai_api.sse import sse

logger = logging.getLogger(__name__)

# SQLSTATE classes and codes that mean the server cannot be reached or serve now
# (connection exception, insufficient resources, shutdown, cannot connect now).
_UNREACHABLE_STATES = ("08", "53", "57P01", "57P02", "57P03")


def sse_error(message: str, type: str = "upstream_error", code: str | None = None) -> bytes:
    """An SSE event carrying an error; the openai client raises APIError when it reads one."""
    return sse(error_body(message, type, code))


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, type="authentication_error", code="invalid_api_key")


def unknown_model(alias: str) -> ApiError:
    return ApiError(
        404,
        f"the model {alias!r} does not exist; GET /v1/models lists the aliases served here",
        code="model_not_found",
    )


def no_live_worker(alias: str, retry_after_s: int) -> ApiError:
    return unavailable(
        f"no live worker serves {alias!r} right now (none ready with a fresh heartbeat); "
        "check its deployment on the Deployments page",
        "no_live_worker",
        retry_after_s,
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
    return unavailable(
        "the database is unreachable; nothing was stored, retry shortly",
        "database_unavailable",
        retry_after_s,
    )


def database_busy(retry_after_s: int) -> ApiError:
    return unavailable(
        "the database gave up on this change (a concurrent change or a timeout); nothing "
        "was stored, retry shortly",
        "database_busy",
        retry_after_s,
    )


def database_error(exc: Exception, retry_after_s: int) -> ApiError:
    """The answer for a database error, by its real cause: 503 database_unavailable only
    when the server cannot be reached; 400 for a value it cannot store (a NUL, a number out
    of range: input that got past the checks at the door); 409 for a conflict with what is
    stored; 503 database_busy for a deadlock or timeout; otherwise 500, logged."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    state = getattr(orig, "sqlstate", None) or ""
    if isinstance(exc, DBAPIError) and (
        exc.connection_invalidated
        or state.startswith(_UNREACHABLE_STATES)
        or (not state and isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError))
    ):
        return database_unavailable(retry_after_s)
    if isinstance(exc, PoolTimeout) or state.startswith("40") or state == "57014":
        return database_busy(retry_after_s)
    if state.startswith("22") or isinstance(orig, psycopg.DataError) or _bad_text(exc):
        reason = str(orig or exc.__cause__ or exc).splitlines()[0]
        return ApiError(
            400,
            f"the request holds a value the database cannot store ({reason}); nothing was stored",
            code="invalid_value",
        )
    if state.startswith("23"):
        return ApiError(
            409,
            "the request conflicts with what is stored (a name or id already in use, or one "
            "that no longer exists); nothing was stored",
            code="conflict",
        )
    error_id = uuid.uuid4().hex
    logger.error("database error (error id %s)", error_id, exc_info=exc)
    return ApiError(
        500,
        f"the database refused the request (error id {error_id}; details in the gateway's "
        "log); nothing was stored",
        type="server_error",
        code="database_error",
    )


def _bad_text(exc: Exception) -> bool:
    """A text that cannot be encoded (a lone surrogate), raised as it was sent."""
    cause = exc.orig if isinstance(exc, StatementError) else exc
    return isinstance(cause, UnicodeEncodeError)
