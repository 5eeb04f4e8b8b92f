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

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import JSONB

from app.batches.files import FileStore
from app.batches.jsonl import BatchLine
from app.batches.output import rendered_size
from app.batches.owner import Owner
from app.batches.reads import BatchReads, render
from app.batches.records import (
    ACTIVE,
    COMPLETION_WINDOWS,
    FINAL,
    BatchError,
    BatchView,
    LineAnswer,
    known_shape,
    new_batch_id,
)
from app.control import audit
from app.control.audit import Actor
from app.db.tables import Batch, BatchRequest

INSERT_CHUNK = 1000


class BatchStore(BatchReads):
    """Create, cancel and finish batches, commit their lines; the reads are BatchReads'."""

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

    def request_cancel(self, batch_id: str, owner: Owner, actor: Actor | None = None) -> BatchView:
        """validating / in_progress -> cancelling: the runner stops sending, lets the lines
        in flight finish, marks the rest cancelled and writes the files. With an actor, the
        change is a "batch.cancel" audit row (none when the batch was cancelling already)."""
        known_shape(batch_id)
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

    def start(self, batch_id: str) -> None:
        """validating -> in_progress (the runner has the batch)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.status == "validating")
                .values(status="in_progress", in_progress_at=func.now())
            )

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
        lines = list(render(conn, batch_id, purpose))
        if not lines:
            return None
        return files.add_batch_file(
            conn, batch_id=batch_id, purpose=purpose, size=rendered_size(lines),
            lines=len(lines), api_key_id=api_key_id,
        )  # fmt: skip

    # -- the watchdog's side -------------------------------------------------------------------

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
