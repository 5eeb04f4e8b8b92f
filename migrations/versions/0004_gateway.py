"""gateway: per-alias settings (response cache, text logging, rate limit)

Per alias the gateway's response cache, text logging and rate limit; an alias without a
row gets the gateway's defaults (HERD_CACHE_ENABLED, HERD_CACHE_TTL_S, text logged, no limit).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aliases",
        sa.Column("alias", sa.Text(), nullable=False),
        sa.Column("cache_enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("cache_ttl_s", sa.Double(), server_default=sa.text("300"), nullable=False),
        sa.Column("log_text", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("rate_limit_rpm", sa.Integer(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("cache_ttl_s > 0", name=op.f("ck_aliases_cache_ttl_s")),
        sa.CheckConstraint("rate_limit_rpm >= 1", name=op.f("ck_aliases_rate_limit_rpm")),
        sa.PrimaryKeyConstraint("alias", name=op.f("pk_aliases")),
    )


def downgrade() -> None:
    op.drop_table("aliases")
