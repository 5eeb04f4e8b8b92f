"""Reads of the `batches` and `batch_requests` tables: views, pages, lines, rendered files.

Nothing here writes; BatchStore (store.py) adds the writes to these reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, func, select, tuple_

from app.batches.output import file_lines
from app.batches.owner import Owner
from app.batches.records import (
    ACTIVE,
    BatchError,
    BatchView,
    PendingLine,
    RunnerInfo,
    known_shape,
)
from app.db.tables import Batch, BatchRequest, Request

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

# The runner's credential never leaves runner_info and credential.
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


class BatchReads:
    """Read batches for the API, the runner and the watchdog."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, batch_id: str, owner: Owner | None = None) -> BatchView:
        known_shape(batch_id)
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
            known_shape(after, " (after)")
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

    def counts(self, batch_id: str) -> tuple[int, int]:
        """(lines with a final state, all lines)."""
        view = self.get(batch_id)
        return view.done, view.total

    def rendered(self, batch_id: str, purpose: str) -> list[bytes]:
        """The lines of a batch's output or error file."""
        with self.engine.connect() as conn:
            return list(render(conn, batch_id, purpose))

    def unfinished(self) -> list[tuple[str, int | None, int]]:
        """(batch id, runner job id, runner starts) of every batch not yet final."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Batch.id, Batch.job_id, Batch.runner_starts)
                .where(Batch.status.in_(ACTIVE))
                .order_by(Batch.created_at)
            ).all()
        return [(r.id, r.job_id, r.runner_starts) for r in rows]


def render(conn: Connection, batch_id: str, purpose: str) -> Iterator[bytes]:
    """The lines of a batch's output file (batch_output) or error file (batch_errors)."""
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
