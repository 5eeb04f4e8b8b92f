"""process_restarts: what `herd up` restarted, per host and process

- `process_restarts`: one row per host (HERD_NODE_NAME) and process `herd up` keeps running
  (gateway, dashboard, supervisor, postgres): how many times it was started again after it
  exited, the last exit code (negative: killed by that signal) and when, since when it keeps
  crashing (NULL while it stays up) and its log file. Written only by
  app.db.process_restarts (for `herd up`); the gateway's /metrics and the Overview page
  read it, so a count outlives the gateway's own restart.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "process_restarts",
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("process", sa.Text(), nullable=False),
        sa.Column("restarts", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_exit_code", sa.Integer(), nullable=True),
        sa.Column("last_exit_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("restarts >= 0", name=op.f("ck_process_restarts_restarts")),
        sa.PrimaryKeyConstraint("host", "process", name=op.f("pk_process_restarts")),
    )


def downgrade() -> None:
    op.drop_table("process_restarts")
