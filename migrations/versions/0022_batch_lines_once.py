"""batch_lines_once: a batch line's calls are found by its number; a line sent but not yet
answered is marked

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-10

- `requests.batch_line`: the number of the batch line a call is (with `batch_id`, the key
  the gateway answers a line sent again by, and the runner counts a lost call by).
- `batch_requests.sent_at`: set by the runner just before it sends a line, cleared once it
  knows that call's outcome. A pending line with it set was sent by a runner that died or
  lost its connection before the answer came: the next runner asks for its answer first
  and counts the call in `attempts` if the line is sent to the fleet again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("batch_line", sa.Integer(), nullable=True))
    op.add_column(
        "batch_requests", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("batch_requests", "sent_at")
    op.drop_column("requests", "batch_line")
