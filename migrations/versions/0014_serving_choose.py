"""serving_choose: a deployment may leave n_ctx and parallel for its workers to choose

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01

The serving parameters now have one definition (app/engine/serving.py), shared by
deployments and `herd worker`, where 0 already meant "choose": n_ctx 0 is the model's
trained context, parallel 0 as many slots (up to 4) as the worker's host has memory for.
The table's checks accepted neither; now both.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def _replace(name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_deployments_{name}"), "deployments", type_="check")
    op.create_check_constraint(name, "deployments", condition)


def upgrade() -> None:
    _replace("n_ctx", "n_ctx >= 0")
    _replace("parallel", "parallel >= 0")


def downgrade() -> None:
    op.execute("UPDATE deployments SET parallel = 1 WHERE parallel = 0")
    op.execute("UPDATE deployments SET n_ctx = 4096 WHERE n_ctx = 0")
    _replace("n_ctx", "n_ctx > 0")
    _replace("parallel", "parallel >= 1")
