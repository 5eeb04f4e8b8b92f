"""worker details: GPU offload as reported by llama.cpp, the alias served, the log file

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workers", sa.Column("gpu_offload_supported", sa.Boolean(), nullable=True))
    op.add_column("workers", sa.Column("n_gpu_layers_offloaded", sa.Integer(), nullable=True))
    op.add_column("workers", sa.Column("alias", sa.Text(), nullable=True))
    op.add_column("workers", sa.Column("log_path", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("workers", "log_path")
    op.drop_column("workers", "alias")
    op.drop_column("workers", "n_gpu_layers_offloaded")
    op.drop_column("workers", "gpu_offload_supported")
