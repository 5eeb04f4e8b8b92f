"""The Batch API's tables: files, batches and their lines."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.tables.base import Base, now_column


class File(Base):
    """An uploaded file (purpose `batch`: JSONL of requests), or a batch's output or error
    file. Input bytes live under HERD_HOME/files; output and error files are written from
    `batch_requests` when read. Written only by app.batches.files."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    purpose: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    # The batch whose output (or errors) this file is; None for an upload.
    batch_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = now_column()

    __table_args__ = (
        CheckConstraint("purpose IN ('batch', 'batch_output', 'batch_errors')", name="purpose"),
        Index("ix_files_created_at", "created_at"),
    )


class Batch(Base):
    """One batch of requests run by the batch runner (a `batch` job). Request counts are
    counted from `batch_requests`, never kept twice. Written only by app.batches.store."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    endpoint: Mapped[str] = mapped_column(Text)
    input_file_id: Mapped[str] = mapped_column(Text)
    completion_window: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'validating'"))
    output_file_id: Mapped[str | None] = mapped_column(Text)
    error_file_id: Mapped[str | None] = mapped_column(Text)
    # Batch-level errors in OpenAI's form ({"object": "list", "data": [...]}).
    errors: Mapped[Any] = mapped_column(JSONB, nullable=True)
    metadata_: Mapped[Any] = mapped_column("metadata", JSONB, nullable=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_by: Mapped[str] = mapped_column(Text)
    # The gateway the runner sends lines through, and the runner's credential there: only a
    # caller holding it may mark calls as this batch's (never shown by the API or pages).
    gateway_url: Mapped[str] = mapped_column(Text)
    runner_token: Mapped[str] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    runner_starts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = now_column()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(
            "status IN ('validating', 'in_progress', 'finalizing', 'completed', 'failed', "
            "'cancelling', 'cancelled', 'expired')",
            name="status",
        ),
        Index("ix_batches_status", "status"),
        Index("ix_batches_created_at", "created_at"),
    )


class BatchRequest(Base):
    """One line of a batch: its request, and once done its answer or error, committed with
    its state in one statement. Written only by app.batches.store."""

    __tablename__ = "batch_requests"

    batch_id: Mapped[str] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[Any] = mapped_column(JSONB)
    # pending -> succeeded | failed | cancelled | expired
    state: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    request_id: Mapped[str | None] = mapped_column(Text)
    response: Mapped[Any] = mapped_column(JSONB, nullable=True)
    error: Mapped[Any] = mapped_column(JSONB, nullable=True)
    # Calls of the line that reached the fleet, a call whose answer was lost with its runner
    # included (revision 0022): above 1 when the line was sent again.
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Set by the runner just before it sends the line, cleared once that call's outcome is
    # known (revision 0022): a pending line with it set was sent by a runner that died, or
    # lost its connection, before the answer came.
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = now_column()

    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'succeeded', 'failed', 'cancelled', 'expired')", name="state"
        ),
        UniqueConstraint("batch_id", "custom_id", name="uq_batch_requests_custom_id"),
        Index("ix_batch_requests_batch_id_state", "batch_id", "state"),
    )
