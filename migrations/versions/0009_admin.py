"""admin: the audit log of every change, and API key scopes, expiry, limits and usage

`audit_log`: one row per change made through app/admin (pages, CLI, admin API, herd apply):
who, how, from where, what, and the target's state before and after as JSON.

`api_keys` gains what a key may do: the aliases it may call (NULL: all), the admin scope
(the admin API), an expiry, per-minute request and token limits and a daily token quota.
`api_key_usage` counts each key's requests and tokens per minute; gateway replicas add their
counts to it in batches and read the totals back, which is how limits hold across replicas.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("via", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target_kind", sa.Text(), nullable=False),
        sa.Column("target_id", sa.Text(), nullable=True),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.CheckConstraint("via IN ('page', 'cli', 'api', 'apply')", name=op.f("ck_audit_log_via")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_actor_at", "audit_log", ["actor", "at"])
    op.create_index("ix_audit_log_action_at", "audit_log", ["action", "at"])

    op.add_column("api_keys", sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=True))
    op.add_column(
        "api_keys",
        sa.Column("admin", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_keys", sa.Column("rate_limit_rpm", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("rate_limit_tpm", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("daily_token_quota", sa.BigInteger(), nullable=True))
    op.create_check_constraint(
        op.f("ck_api_keys_limits"),
        "api_keys",
        "rate_limit_rpm >= 1 AND rate_limit_tpm >= 1 AND daily_token_quota >= 1",
    )
    op.create_table(
        "api_key_usage",
        sa.Column("api_key_id", sa.BigInteger(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_api_key_usage_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("api_key_id", "minute", name=op.f("pk_api_key_usage")),
    )


def downgrade() -> None:
    op.drop_table("api_key_usage")
    op.drop_constraint(op.f("ck_api_keys_limits"), "api_keys", type_="check")
    for column in (
        "daily_token_quota",
        "rate_limit_tpm",
        "rate_limit_rpm",
        "expires_at",
        "admin",
        "scopes",
    ):
        op.drop_column("api_keys", column)
    op.drop_index("ix_audit_log_action_at", table_name="audit_log")
    op.drop_index("ix_audit_log_actor_at", table_name="audit_log")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
