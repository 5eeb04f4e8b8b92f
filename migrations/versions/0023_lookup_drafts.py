"""lookup_drafts: prompt-lookup decoding's counts per request, and its switch per deployment

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-08

- `requests.drafted_tokens`, `requests.accepted_tokens`: the draft tokens the worker decoded
  for the call (taken from its prompt and answer, app/engine/lookup_drafts.py) and those it
  confirmed, from the usage's completion_tokens_details (accepted + rejected prediction
  tokens). NULL when the answer did not say (older workers, errors, cache hits).
- `deployments.lookup_drafts`: draft tokens per request and step its workers may try
  (`herd worker --lookup-drafts`); 0 turns drafting off. The output is the same either way.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("drafted_tokens", sa.Integer(), nullable=True))
    op.add_column("requests", sa.Column("accepted_tokens", sa.Integer(), nullable=True))
    op.add_column(
        "deployments",
        sa.Column("lookup_drafts", sa.Integer(), server_default=sa.text("8"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_deployments_lookup_drafts"), "deployments", "lookup_drafts BETWEEN 0 AND 64"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_deployments_lookup_drafts"), "deployments", type_="check")
    op.drop_column("deployments", "lookup_drafts")
    op.drop_column("requests", "accepted_tokens")
    op.drop_column("requests", "drafted_tokens")
