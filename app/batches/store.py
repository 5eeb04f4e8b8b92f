"""The `batches` and `batch_requests` tables: the only code that writes them.

A batch is created `validating` with all its lines `pending` in one transaction. Its runner
moves it to `in_progress`, commits each line's answer or error together with the line's new
state in one statement that only applies to a line still pending (so a line is answered
once, whatever runs twice), and finalizes it: `finalizing`, then `completed`, `cancelled`
(after a cancel: `cancelling`) or `expired`, with the output and error files recorded.
Request counts are counted from the lines, never kept twice.

A line reaches the fleet once: the runner marks it sent just before each call and clears the
mark once it knows the call's outcome, and the gateway that answers a line commits the
answer too (commit_answers), so a line answered while its runner died is done. A runner
that finds a line still marked sends it again with its number; the gateway answers with the
answer it has, if any, and otherwise the earlier calls the request log holds are counted in
`attempts` (logged_calls).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    RowMapping,
    bindparam,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from app.batches.files import FileStore
from app.batches.jsonl import BatchLine
from app.batches.output import file_lines, rendered_size
from app.batches.owner import Owner
from app.control import audit
from app.control.audit import Actor
from app.db.tables import Batch, BatchRequest, Request

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("completed", "failed", "cancelled", "expired")
INSERT_CHUNK = 1000


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


_COUNTS = (
    select(
        BatchRequest.batch_id,
        func.count().label("total"),
        func.count().filter(BatchRequest.state == "succeeded").label("completed"),
        func.count().filter(BatchRequest.state == "failed").label("failed"),
        func.count().filter(BatchRequest.state.in_(("cancelled", "expired"))).label("cancelled"),
        func.sum(func.greatest(BatchRequest.attempts - 1, 0)).label("resends"),
    )
    .group_by(BatchRequest.batch_id)
    .subquery()
)

# The runner's credential never leaves this module's runner-side methods.
_COLUMNS = [
    c for c in Batch.__table__.c if c.name not in ("runner_token", "gateway_url", "runner_starts")
]


def _view(row: RowMapping) -> BatchView:
    return BatchView(
        **{c.name: row[c.name] for c in _COLUMNS},
        total=row["total"] or 0,
        completed=row["completed"] or 0,
        failed=row["failed"] or 0,
        cancelled=row["cancelled"] or 0,
        resends=row["resends"] or 0,
    )


def _select() -> Any:
    return select(
        *_COLUMNS,
        _COUNTS.c.total,
        _COUNTS.c.completed,
        _COUNTS.c.failed,
        _COUNTS.c.cancelled,
        _COUNTS.c.resends,
    ).outerjoin(_COUNTS, _COUNTS.c.batch_id == Batch.id)


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


_BATCH_ID = re.compile(r"batch_[0-9a-f]{24}")


def _known_shape(batch_id: str, what: str = "") -> None:
    """A value not shaped like new_batch_id()'s names no batch: 404 without a query (a NUL
    byte, say, would make PostgreSQL refuse the statement)."""
    if _BATCH_ID.fullmatch(batch_id) is None:
        raise BatchError(f"no batch {batch_id[:64]!r}{what}", status=404, code="batch_not_found")


class BatchStore:
    """Create, read, cancel batches; what the runner reads and commits."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- the API's side ------------------------------------------------------------------------
    def create(
        self,
        *,
        endpoint: str,
        input_file_id: str,
        completion_window: str,
        lines: Iterable[BatchLine],
        owner: Owner,
        created_by: str,
        gateway_url: str,
        metadata: dict[str, Any] | None = None,
        actor: Actor | None = None,
    ) -> BatchView:
        """A new `validating` batch with every line `pending`, in one transaction. A line
        whose url is not the batch's endpoint is failed at once (its error in the error
        file), as OpenAI's batches require one endpoint. A batch someone asked for (actor
        given) is a "batch.create" audit row in the same transaction; one Herd makes for a
        job of its own (a distillation) is not: the job's start is."""
        window = COMPLETION_WINDOWS.get(completion_window)
        if window is None:
            raise BatchError(
                f"completion_window {completion_window!r} is not supported; use '24h'",
                code="invalid_value",
            )
        batch_id = new_batch_id()
        with self.engine.begin() as conn:
            conn.execute(
                insert(Batch).values(
                    id=batch_id,
                    endpoint=endpoint,
                    input_file_id=input_file_id,
                    completion_window=completion_window,
                    metadata_=metadata,
                    api_key_id=owner.api_key_id,
                    created_by=created_by,
                    gateway_url=gateway_url.rstrip("/"),
                    runner_token=secrets.token_urlsafe(32),
                    expires_at=datetime.now(UTC) + window,
                )
            )
            chunk: list[dict[str, Any]] = []
            for line in lines:
                chunk.append(_line_row(batch_id, endpoint, line))
                if len(chunk) >= INSERT_CHUNK:
                    conn.execute(insert(BatchRequest), chunk)
                    chunk = []
            if chunk:
                conn.execute(insert(BatchRequest), chunk)
            if actor is not None:
                after = {"endpoint": endpoint, "input_file_id": input_file_id,
                         "metadata": metadata}  # fmt: skip
                audit.record(conn, actor, "batch.create", "batch", batch_id, None, after)
        return self.get(batch_id)

    def get(self, batch_id: str, owner: Owner | None = None) -> BatchView:
        _known_shape(batch_id)
        query = _select().where(Batch.id == batch_id)
        if owner is not None:
            query = query.where(owner.clause(Batch.api_key_id))
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise BatchError(f"no batch {batch_id!r}", status=404, code="batch_not_found")
        return _view(row)

    def page(
        self, owner: Owner, *, after: str | None = None, limit: int = 20
    ) -> tuple[list[BatchView], bool]:
        """The newest batches first, those older than `after` when given; and whether
        there are more."""
        query = _select().where(owner.clause(Batch.api_key_id))
        if after is not None:
            _known_shape(after, " (after)")
        with self.engine.connect() as conn:
            if after is not None:
                anchor = conn.execute(
                    select(Batch.created_at, Batch.id).where(Batch.id == after)
                ).first()
                if anchor is None:
                    raise BatchError(f"no batch {after!r} (after)", status=404,
                                     code="batch_not_found")  # fmt: skip
                query = query.where(
                    tuple_(Batch.created_at, Batch.id) < tuple_(anchor.created_at, anchor.id)
                )
            query = query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)
            rows = conn.execute(query).mappings().all()
        views = [_view(r) for r in rows]
        return views[:limit], len(views) > limit

    def request_cancel(self, batch_id: str, owner: Owner, actor: Actor | None = None) -> BatchView:
        """validating / in_progress -> cancelling: the runner stops sending, lets the lines
        in flight finish, marks the rest cancelled and writes the files. With an actor, the
        change is a "batch.cancel" audit row (none when the batch was cancelling already)."""
        _known_shape(batch_id)
        with self.engine.begin() as conn:
            row = conn.execute(
                select(Batch.status)
                .where(Batch.id == batch_id, owner.clause(Batch.api_key_id))
                .with_for_update()
            ).first()
            if row is None:
                raise BatchError(f"no batch {batch_id!r}", status=404, code="batch_not_found")
            if row.status in ("validating", "in_progress"):
                conn.execute(
                    update(Batch)
                    .where(Batch.id == batch_id)
                    .values(status="cancelling", cancelling_at=func.now())
                )
                if actor is not None:
                    before, after = {"status": row.status}, {"status": "cancelling"}
                    audit.record(conn, actor, "batch.cancel", "batch", batch_id, before, after)
            elif row.status not in ("cancelling", "cancelled"):
                raise BatchError(
                    f"batch {batch_id} is {row.status}; only a validating or in_progress "
                    "batch can be cancelled",
                    status=409,
                    code="batch_not_cancellable",
                )
        return self.get(batch_id)

    # -- the runner's side -----------------------------------------------------------------------
    def runner_info(self, batch_id: str) -> RunnerInfo:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(Batch.status, Batch.gateway_url, Batch.runner_token, Batch.expires_at)
                .where(Batch.id == batch_id)
            ).first()  # fmt: skip
        if row is None:
            raise BatchError(f"no batch {batch_id!r}", status=404)
        return RunnerInfo(row.status, row.gateway_url, row.runner_token, row.expires_at)

    def credential(self, batch_id: str) -> tuple[str, int | None] | None:
        """The runner token and owner key of an unfinished batch (the gateway checks the
        batch marking against it); None for a batch that is gone or over."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(Batch.runner_token, Batch.api_key_id).where(
                    Batch.id == batch_id, Batch.status.in_(ACTIVE)
                )
            ).first()
        return None if row is None else (row.runner_token, row.api_key_id)

    def status(self, batch_id: str) -> str:
        with self.engine.connect() as conn:
            status: str = conn.execute(
                select(Batch.status).where(Batch.id == batch_id)
            ).scalar_one()
        return status

    def start(self, batch_id: str) -> None:
        """validating -> in_progress (the runner has the batch)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.status == "validating")
                .values(status="in_progress", in_progress_at=func.now())
            )

    def pending(self, batch_id: str, skip: set[int], limit: int) -> list[PendingLine]:
        """Pending lines in file order, leaving out those in `skip` (in flight)."""
        query = (
            select(
                BatchRequest.line,
                BatchRequest.custom_id,
                BatchRequest.url,
                BatchRequest.body,
                BatchRequest.attempts,
                BatchRequest.sent_at.is_not(None).label("sent"),
            )
            .where(BatchRequest.batch_id == batch_id, BatchRequest.state == "pending")
            .order_by(BatchRequest.line)
            .limit(limit + len(skip))
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        lines = [PendingLine(*row) for row in rows if row.line not in skip]
        return lines[:limit]

    def record(
        self,
        batch_id: str,
        line: int,
        *,
        state: str,
        attempts: int,
        status_code: int | None = None,
        request_id: str | None = None,
        response: Any = None,
        error: Any = None,
    ) -> bool:
        """Commit a line's answer or error with its new state, if it is still pending;
        False when it was not (the gateway that answered it committed it first: then only
        the attempts are raised to these, which may count a call the gateway did not see)."""
        this_line = (BatchRequest.batch_id == batch_id, BatchRequest.line == line)
        with self.engine.begin() as conn:
            row = conn.execute(
                update(BatchRequest)
                .where(*this_line, BatchRequest.state == "pending")
                .values(
                    state=state,
                    attempts=attempts,
                    status_code=status_code,
                    request_id=request_id,
                    response=response,
                    error=error,
                    sent_at=None,
                    updated_at=func.now(),
                )
                .returning(BatchRequest.line)
            ).first()
            if row is None:
                conn.execute(
                    update(BatchRequest)
                    .where(*this_line, BatchRequest.attempts < attempts)
                    .values(attempts=attempts)
                )
        return row is not None

    def commit_answers(self, answers: list[tuple[str, int, LineAnswer]]) -> None:
        """The gateway's side: commit (batch id, line, answer) for lines still pending, the
        call counted as one more attempt. Whichever of gateway and runner commits first
        wins; a line answered while its runner died is done without it."""
        if not answers:
            return
        statement = (
            update(BatchRequest)
            .where(
                BatchRequest.batch_id == bindparam("b_batch_id"),
                BatchRequest.line == bindparam("b_line"),
                BatchRequest.state == "pending",
            )
            .values(
                state=bindparam("b_state"),
                attempts=BatchRequest.attempts + 1,
                status_code=bindparam("b_status_code"),
                request_id=bindparam("b_request_id"),
                response=bindparam("b_response", type_=JSONB),
                sent_at=None,
                updated_at=func.now(),
            )
        )
        rows = [
            {"b_batch_id": batch_id, "b_line": line, "b_state": answer.state,
             "b_status_code": answer.status_code, "b_request_id": answer.request_id,
             "b_response": answer.body}
            for batch_id, line, answer in answers
        ]  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(statement, rows)

    def mark_sent(self, batch_id: str, lines: list[int]) -> None:
        """Mark pending lines as sent, just before their calls go out."""
        if not lines:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(BatchRequest)
                .where(
                    BatchRequest.batch_id == batch_id,
                    BatchRequest.line.in_(lines),
                    BatchRequest.state == "pending",
                )
                .values(sent_at=func.now())
            )

    def clear_sent(self, batch_id: str, line: int) -> None:
        """The call of a pending line did not reach the fleet (the gateway refused it, or no
        connection was made): the line is not marked sent any more."""
        self._update_pending(batch_id, line, sent_at=None)

    def logged_calls(self, batch_id: str, line: int) -> int:
        """Calls of the line the request log holds that were answered, not refused with
        429/503 (those reached no worker): as the runner counts attempts."""
        query = select(func.count()).where(
            Request.batch_id == batch_id,
            Request.batch_line == line,
            func.coalesce(Request.http_status, 0).not_in((429, 503)),
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def count_attempt(self, batch_id: str, line: int, attempts: int) -> None:
        """Remember a failed attempt of a pending line, so a resumed runner counts on (its
        outcome known, the line is not marked sent any more)."""
        self._update_pending(batch_id, line, attempts=attempts, sent_at=None,
                             updated_at=func.now())  # fmt: skip

    def _update_pending(self, batch_id: str, line: int, **values: Any) -> None:
        """Set values on the line if it is still pending."""
        with self.engine.begin() as conn:
            conn.execute(
                update(BatchRequest)
                .where(
                    BatchRequest.batch_id == batch_id,
                    BatchRequest.line == line,
                    BatchRequest.state == "pending",
                )
                .values(**values)
            )

    def counts(self, batch_id: str) -> tuple[int, int]:
        """(lines with a final state, all lines)."""
        view = self.get(batch_id)
        return view.done, view.total

    def finalize(self, batch_id: str, files: FileStore) -> BatchView:
        """End the batch: pending lines become cancelled (after a cancel) or expired (past
        its window); then the output and error files are recorded and the status set, in
        one transaction. A batch already final is left as it is."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(Batch.status, Batch.expires_at, Batch.api_key_id)
                .where(Batch.id == batch_id)
                .with_for_update()
            ).first()
            if row is None or row.status in FINAL:
                return self.get(batch_id)
            if row.status == "cancelling":
                final, left = "cancelled", "cancelled"
            elif row.expires_at <= datetime.now(UTC):
                final, left = "expired", "expired"
            else:
                final, left = "completed", None
            conn.execute(update(Batch).where(Batch.id == batch_id).values(finalizing_at=func.now()))
            if left is not None:
                message = {
                    "cancelled": "the batch was cancelled before this request was sent",
                    "expired": "the batch expired before this request was sent",
                }[left]
                conn.execute(
                    update(BatchRequest)
                    .where(BatchRequest.batch_id == batch_id, BatchRequest.state == "pending")
                    .values(
                        state=left,
                        error={"code": f"batch_{left}", "message": message},
                        updated_at=func.now(),
                    )
                )
            output_id = self._file(conn, files, batch_id, "batch_output", row.api_key_id)
            error_id = self._file(conn, files, batch_id, "batch_errors", row.api_key_id)
            conn.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values(
                    {
                        "status": final,
                        f"{final}_at": func.now(),
                        "output_file_id": output_id,
                        "error_file_id": error_id,
                    }
                )
            )
        return self.get(batch_id)

    def fail(self, batch_id: str, message: str) -> None:
        """An unfinished batch that cannot go on (its runner keeps dying)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.status.in_(ACTIVE))
                .values(
                    status="failed",
                    failed_at=func.now(),
                    errors={"object": "list", "data": [{"code": "runner_failed",
                                                         "message": message}]},
                )
            )  # fmt: skip

    def _file(
        self, conn: Connection, files: FileStore, batch_id: str, purpose: str,
        api_key_id: int | None,
    ) -> str | None:  # fmt: skip
        lines = list(_render(conn, batch_id, purpose))
        if not lines:
            return None
        return files.add_batch_file(
            conn, batch_id=batch_id, purpose=purpose, size=rendered_size(lines),
            lines=len(lines), api_key_id=api_key_id,
        )  # fmt: skip

    def rendered(self, batch_id: str, purpose: str) -> list[bytes]:
        """The lines of a batch's output or error file."""
        with self.engine.connect() as conn:
            return list(_render(conn, batch_id, purpose))

    # -- the watchdog's side -------------------------------------------------------------------
    def unfinished(self) -> list[tuple[str, int | None, int]]:
        """(batch id, runner job id, runner starts) of every batch not yet final."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Batch.id, Batch.job_id, Batch.runner_starts)
                .where(Batch.status.in_(ACTIVE))
                .order_by(Batch.created_at)
            ).all()
        return [(r.id, r.job_id, r.runner_starts) for r in rows]

    def hand_to(self, batch_id: str, old_job_id: int | None, new_job_id: int) -> bool:
        """Make new_job_id the batch's runner if old_job_id still is (another gateway may
        have been faster); False otherwise."""
        with self.engine.begin() as conn:
            row = conn.execute(
                update(Batch)
                .where(
                    Batch.id == batch_id,
                    Batch.job_id.is_not_distinct_from(old_job_id),
                    Batch.status.in_(ACTIVE),
                )
                .values(job_id=new_job_id, runner_starts=Batch.runner_starts + 1)
                .returning(Batch.id)
            ).first()
        return row is not None


def _line_row(batch_id: str, endpoint: str, line: BatchLine) -> dict[str, Any]:
    row: dict[str, Any] = {
        "batch_id": batch_id,
        "line": line.line,
        "custom_id": line.custom_id,
        "url": line.url,
        "body": line.body,
        # Every row names the same columns: an executemany takes them from the first row.
        "state": "pending",
        "error": None,
    }
    if line.url != endpoint:
        row["state"] = "failed"
        row["error"] = {
            "code": "invalid_url",
            "message": f"line {line.line} calls {line.url}, but the batch's endpoint is {endpoint}",
        }
    return row


def _render(conn: Connection, batch_id: str, purpose: str) -> Iterator[bytes]:
    states = ("succeeded",) if purpose == "batch_output" else ("failed", "cancelled", "expired")
    rows = conn.execute(
        select(
            BatchRequest.line,
            BatchRequest.custom_id,
            BatchRequest.status_code,
            BatchRequest.request_id,
            BatchRequest.response,
            BatchRequest.error,
        )
        .where(BatchRequest.batch_id == batch_id, BatchRequest.state.in_(states))
        .order_by(BatchRequest.line)
    ).mappings()
    yield from file_lines(batch_id, rows)
