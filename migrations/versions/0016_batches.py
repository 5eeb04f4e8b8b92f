"""batches: OpenAI-compatible files and batches, run line by line by the batch runner

- `files`: uploaded JSONL files (purpose `batch`; bytes under HERD_HOME/files) and the
  output and error files of batches (written from `batch_requests` when read).
- `batches`: one row per batch: endpoint, input file, status lifecycle and its times, who
  created it (API key), the runner job, and the runner's credential for the gateway.
- `batch_requests`: one row per line of a batch: custom_id (unique per batch), the request,
  its state (pending, succeeded, failed, cancelled, expired) and, committed with the state in
  one statement, the answer or the error and the number of attempts.
- `requests.batch_id`: the request log marks the calls the batch runner made.
- `requests_hourly.batch_requests`: how many of an hour's requests were batch lines, kept by
  its own trigger, so engagement metrics can leave them out without a scan of raw rows.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

BATCH_ROLLUP = """
    CREATE FUNCTION herd_batch_rollup() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO requests_hourly AS h (hour, alias, model_id, worker_id, batch_requests)
      SELECT date_trunc('hour', r.created_at, 'UTC'), coalesce(r.alias, ''),
             coalesce(r.model_id, 0), coalesce(r.worker_id, 0), count(*)
      FROM new_rows r WHERE r.batch_id IS NOT NULL
      GROUP BY 1, 2, 3, 4
      ON CONFLICT (hour, alias, model_id, worker_id) DO UPDATE SET
        batch_requests = h.batch_requests + excluded.batch_requests;
      RETURN NULL;
    END
    $$
"""

BATCH_TRIGGER = """
    CREATE TRIGGER requests_batch_rollup AFTER INSERT ON requests
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herd_batch_rollup()
"""


def _times(*names: str) -> list[sa.Column[object]]:
    return [sa.Column(name, sa.DateTime(timezone=True), nullable=True) for name in names]


def upgrade() -> None:
    op.add_column("requests", sa.Column("batch_id", sa.Text(), nullable=True))
    op.create_index(
        "ix_requests_batch_id",
        "requests",
        ["batch_id"],
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )
    op.add_column(
        "requests_hourly",
        sa.Column("batch_requests", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.execute(BATCH_ROLLUP)
    op.execute(BATCH_TRIGGER)

    op.create_table(
        "files",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("api_key_id", sa.BigInteger(), nullable=True),
        sa.Column("batch_id", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "purpose IN ('batch', 'batch_output', 'batch_errors')", name=op.f("ck_files_purpose")
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_files_api_key_id_api_keys"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
    )
    op.create_index("ix_files_created_at", "files", ["created_at"])

    op.create_table(
        "batches",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("input_file_id", sa.Text(), nullable=False),
        sa.Column("completion_window", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'validating'"), nullable=False),
        sa.Column("output_file_id", sa.Text(), nullable=True),
        sa.Column("error_file_id", sa.Text(), nullable=True),
        sa.Column("errors", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("api_key_id", sa.BigInteger(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("gateway_url", sa.Text(), nullable=False),
        sa.Column("runner_token", sa.Text(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("runner_starts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        *_times(
            "in_progress_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
        ),
        sa.CheckConstraint(
            "status IN ('validating', 'in_progress', 'finalizing', 'completed', 'failed', "
            "'cancelling', 'cancelled', 'expired')",
            name=op.f("ck_batches_status"),
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_batches_api_key_id_api_keys"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_index("ix_batches_created_at", "batches", ["created_at"])

    op.create_table(
        "batch_requests",
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("state", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'succeeded', 'failed', 'cancelled', 'expired')",
            name=op.f("ck_batch_requests_state"),
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_batch_requests_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "line", name=op.f("pk_batch_requests")),
        sa.UniqueConstraint("batch_id", "custom_id", name="uq_batch_requests_custom_id"),
    )
    op.create_index("ix_batch_requests_batch_id_state", "batch_requests", ["batch_id", "state"])


def downgrade() -> None:
    op.drop_table("batch_requests")
    op.drop_table("batches")
    op.drop_table("files")
    op.execute("DROP TRIGGER requests_batch_rollup ON requests")
    op.execute("DROP FUNCTION herd_batch_rollup()")
    op.drop_column("requests_hourly", "batch_requests")
    op.drop_index("ix_requests_batch_id", table_name="requests")
    op.drop_column("requests", "batch_id")
