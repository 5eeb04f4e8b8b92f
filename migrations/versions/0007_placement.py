"""placement: nodes with labels and heartbeats, node selectors and external deployments,
one placement row per supervised replica, and the gateways' waiting counts for autoscaling

- `nodes`: one row per supervisor's machine (HERD_NODE_NAME, HERD_NODE_LABELS), its
  heartbeat written every second; a node silent for HERD_NODE_TIMEOUT_S is dead.
- `deployments.node_labels`: labels a node must carry to run the deployment (besides the
  existing `node` pin); `deployments.external`: replicas are started by someone else
  (Kubernetes, an operator running `herd worker --join`), never by a supervisor.
- `placements`: which node runs replica i of a deployment; decided by supervisors under
  one advisory lock, so no two ever both run the same replica.
- `gateway_demand`: each gateway's waiting and in-flight counts per alias, upserted about
  once a second; `herd_queued_requests(alias)` sums the fresh waiting counts, and
  `herd_alias_demand(alias)` the fresh in-flight ones (served or waiting: KEDA's query, so
  that an alias busy without a queue is not scaled to zero).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# A gateway that has not written its counts for this long is dead or idle: not counted.
DEMAND_FUNCTIONS = (
    """
CREATE FUNCTION herd_queued_requests(alias text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(d.waiting), 0)::bigint
    FROM gateway_demand d
    WHERE d.alias = $1 AND d.updated_at > now() - interval '10 seconds'
$$
""",
    """
CREATE FUNCTION herd_alias_demand(alias text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(d.in_flight), 0)::bigint
    FROM gateway_demand d
    WHERE d.alias = $1 AND d.updated_at > now() - interval '10 seconds'
$$
""",
)
# A placement made by one supervisor reaches the node it names at once, not at its next poll.
PLACEMENTS_NOTIFY = """
CREATE TRIGGER placements_notify
AFTER INSERT OR UPDATE OR DELETE ON placements
FOR EACH STATEMENT EXECUTE FUNCTION herd_notify_deployments()
"""


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "labels",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "heartbeat_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_nodes")),
    )
    op.add_column(
        "deployments",
        sa.Column("node_labels", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column(
        "deployments",
        sa.Column("external", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.create_table(
        "placements",
        sa.Column("deployment_id", sa.BigInteger(), nullable=False),
        sa.Column("replica", sa.Integer(), nullable=False),
        sa.Column("node", sa.Text(), nullable=False),
        sa.Column(
            "placed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("replica >= 0", name=op.f("ck_placements_replica")),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_placements_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("deployment_id", "replica", name=op.f("pk_placements")),
    )
    op.create_index(op.f("ix_placements_node"), "placements", ["node"], unique=False)
    op.create_table(
        "gateway_demand",
        sa.Column("gateway", sa.Text(), nullable=False),
        sa.Column("alias", sa.Text(), nullable=False),
        sa.Column("waiting", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("in_flight", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("gateway", "alias", name=op.f("pk_gateway_demand")),
    )
    op.create_index(op.f("ix_gateway_demand_alias"), "gateway_demand", ["alias"], unique=False)
    for function in DEMAND_FUNCTIONS:
        op.execute(function)
    op.execute(PLACEMENTS_NOTIFY)


def downgrade() -> None:
    op.execute("DROP TRIGGER placements_notify ON placements")
    op.execute("DROP FUNCTION herd_alias_demand(text)")
    op.execute("DROP FUNCTION herd_queued_requests(text)")
    op.drop_index(op.f("ix_gateway_demand_alias"), table_name="gateway_demand")
    op.drop_table("gateway_demand")
    op.drop_index(op.f("ix_placements_node"), table_name="placements")
    op.drop_table("placements")
    op.drop_column("deployments", "external")
    op.drop_column("deployments", "node_labels")
    op.drop_table("nodes")
