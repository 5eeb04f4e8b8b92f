"""audit_origin: the page or command a change came from is its own column

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-08

- `audit_log.origin`: the page ("models", "evaluation"), the command ("herd deploy") or the
  API route ("POST /v1/batches") a change came from. Until now `source` mixed it with the
  client address and host name: pages wrote "page:models", rollouts "rollouts".

Older rows are backfilled from what they said: "page:X" becomes origin X (the source left
empty: the page's client address was never recorded); "rollouts" becomes the Rollouts page,
the Evaluation page for a canary started there (its rollout row says so), `herd rollout ...`
for the CLI and "canary guard" for Herd's own rollbacks; every `herd apply` row gets
"herd apply". Other CLI and API rows did not record their command or route and keep origin
NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

BACKFILL = [
    # Pages: "page:models" -> via page, origin models.
    """UPDATE audit_log SET origin = substr(source, 6), source = NULL
       WHERE source LIKE 'page:%'""",
    # A canary started on the Evaluation page: its rollout row, written in the same
    # transaction (so at the same now()), names the page it was started from.
    """UPDATE audit_log a SET origin = r.signals ->> 'started_from', source = NULL
       FROM rollouts r
       WHERE a.source = 'rollouts' AND a.via = 'page' AND a.action = 'rollout.canary'
         AND r.action = 'canary' AND r.alias = a.target_id AND r.created_at = a.at
         AND r.signals ->> 'started_from' IS NOT NULL""",
    """UPDATE audit_log SET origin = 'rollouts', source = NULL
       WHERE source = 'rollouts' AND via = 'page'""",
    """UPDATE audit_log SET origin = 'herd rollout ' || split_part(action, '.', 2),
                            source = NULL
       WHERE source = 'rollouts' AND via = 'cli'""",
    """UPDATE audit_log SET origin = 'canary guard', source = NULL
       WHERE source = 'rollouts' AND via = 'system'""",
    """UPDATE audit_log SET origin = 'herd apply' WHERE via = 'apply' AND origin IS NULL""",
]


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("origin", sa.Text(), nullable=True))
    for statement in BACKFILL:
        op.execute(statement)


def downgrade() -> None:
    # Back to the mixed column: pages as "page:X", rollout rows as "rollouts".
    op.execute(
        """UPDATE audit_log SET source = 'rollouts'
           WHERE action LIKE 'rollout.%' AND origin IS NOT NULL"""
    )
    op.execute(
        """UPDATE audit_log SET source = 'page:' || origin
           WHERE via = 'page' AND origin IS NOT NULL AND action NOT LIKE 'rollout.%'"""
    )
    op.drop_column("audit_log", "origin")
