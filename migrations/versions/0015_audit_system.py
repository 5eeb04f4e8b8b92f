"""audit_system: changes Herd makes by itself are audited too

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01

Rollouts (canary, promote, rollback) now write an `audit_log` row like every other change;
the canary guard in the supervisor rolls back on its own, recorded with `via = 'system'`.
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def _via(values: str) -> None:
    op.drop_constraint(op.f("ck_audit_log_via"), "audit_log", type_="check")
    op.create_check_constraint("via", "audit_log", f"via IN ({values})")


def upgrade() -> None:
    _via("'page', 'cli', 'api', 'apply', 'system'")


def downgrade() -> None:
    op.execute("DELETE FROM audit_log WHERE via = 'system'")
    _via("'page', 'cli', 'api', 'apply'")
