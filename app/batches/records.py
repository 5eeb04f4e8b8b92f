"""What the batch store hands out and takes in, as plain data: batches, lines and answers.

No SQL here: the store (store.py) writes the tables, reads.py reads them into these.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("completed", "failed", "cancelled", "expired")


class BatchError(ValueError):
    """A batch operation was refused; status is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


@dataclass(frozen=True)
class BatchView:
    """A batch with its request counts, as plain data."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    errors: Any
    metadata: Any
    api_key_id: int | None
    created_by: str
    job_id: int | None
    created_at: datetime
    expires_at: datetime
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelling_at: datetime | None
    cancelled_at: datetime | None
    total: int
    completed: int
    failed: int
    cancelled: int
    # Calls beyond one per line: lines sent again (a 5xx retried, an answer lost with its
    # runner or its gateway).
    resends: int = 0

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    @property
    def done(self) -> int:
        """Lines with a final state."""
        return self.completed + self.failed + self.cancelled

    def openai(self) -> dict[str, Any]:
        """The batch as OpenAI's API shows it."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": self.errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": _ts(self.created_at),
            "in_progress_at": _ts(self.in_progress_at),
            "expires_at": _ts(self.expires_at),
            "finalizing_at": _ts(self.finalizing_at),
            "completed_at": _ts(self.completed_at),
            "failed_at": _ts(self.failed_at),
            "expired_at": _ts(self.expired_at),
            "cancelling_at": _ts(self.cancelling_at),
            "cancelled_at": _ts(self.cancelled_at),
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class PendingLine:
    line: int
    custom_id: str
    url: str
    body: dict[str, Any]
    attempts: int
    # Marked sent: a call of it went out and its outcome never came back to a runner.
    sent: bool = False


# Answers that end a line whatever its attempts: 200, or a 4xx other than 429 (the client's
# own error, which a retry would only repeat). 429 and 5xx are for the runner to retry.
def settles(status_code: int) -> bool:
    return status_code < 500 and status_code != 429


@dataclass(frozen=True)
class LineAnswer:
    """The gateway's answer to one call of a line, as the line keeps it."""

    status_code: int
    request_id: str | None
    body: Any

    @property
    def state(self) -> str:
        return "succeeded" if self.status_code == 200 else "failed"


def line_answer(status_code: int, content: bytes, request_id: str | None = None) -> LineAnswer:
    """An answer from its status and bytes: the body as JSON (an error body holding the text
    when it is none); the request id given, or the body's `id`."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = content.decode(errors="replace")[:2000]
        body = {"error": {"message": text, "type": "upstream_error"}}
    if request_id is None and isinstance(body, dict) and isinstance(body.get("id"), str):
        request_id = body["id"]
    return LineAnswer(status_code, request_id, body)


@dataclass(frozen=True)
class RunnerInfo:
    """What the runner needs of its batch."""

    status: str
    gateway_url: str
    runner_token: str
    expires_at: datetime


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


_BATCH_ID = re.compile(r"batch_[0-9a-f]{24}")


def known_shape(batch_id: str, what: str = "") -> None:
    """A value not shaped like new_batch_id()'s names no batch: 404 without a query (a NUL
    byte, say, would make PostgreSQL refuse the statement)."""
    if _BATCH_ID.fullmatch(batch_id) is None:
        raise BatchError(f"no batch {batch_id[:64]!r}{what}", status=404, code="batch_not_found")
