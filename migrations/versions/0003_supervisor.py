"""supervisor: rolling-update generation, failure count and node on deployments; the
worker processes each supervisor runs; a NOTIFY on every deployment change

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Supervisors LISTEN on this channel, so a change made anywhere (dashboard, CLI, psql)
# reaches them at once instead of at their next poll.
NOTIFY_FUNCTION = """
CREATE FUNCTION herd_notify_deployments() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('herd_deployments', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
NOTIFY_TRIGGER = """
CREATE TRIGGER deployments_notify
AFTER INSERT OR UPDATE OR DELETE ON deployments
FOR EACH STATEMENT EXECUTE FUNCTION herd_notify_deployments()
"""


def upgrade() -> None:
    op.add_column(
        "deployments",
        sa.Column("generation", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )
    op.add_column(
        "deployments",
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("deployments", sa.Column("node", sa.Text(), nullable=True))
    op.create_check_constraint(op.f("ck_deployments_generation"), "deployments", "generation >= 1")
    op.create_check_constraint(op.f("ck_deployments_failures"), "deployments", "failures >= 0")
    op.create_table(
        "worker_processes",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("node", sa.Text(), nullable=False),
        sa.Column("deployment_id", sa.BigInteger(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("log_path", sa.Text(), nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("stop_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_processes")),
    )
    op.create_index(
        "uq_worker_processes_node_pid", "worker_processes", ["node", "pid"], unique=True
    )
    op.create_index(
        op.f("ix_worker_processes_deployment_id"),
        "worker_processes",
        ["deployment_id"],
        unique=False,
    )
    op.execute(NOTIFY_FUNCTION)
    op.execute(NOTIFY_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER deployments_notify ON deployments")
    op.execute("DROP FUNCTION herd_notify_deployments()")
    op.drop_index(op.f("ix_worker_processes_deployment_id"), table_name="worker_processes")
    op.drop_index("uq_worker_processes_node_pid", table_name="worker_processes")
    op.drop_table("worker_processes")
    op.drop_constraint(op.f("ck_deployments_failures"), "deployments", type_="check")
    op.drop_constraint(op.f("ck_deployments_generation"), "deployments", type_="check")
    op.drop_column("deployments", "node")
    op.drop_column("deployments", "failures")
    op.drop_column("deployments", "generation")
