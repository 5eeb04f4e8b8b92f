"""jobs_lineage: background jobs (quantize, evaluate, later batches and datasets) and the
lineage of models made inside Herd

- `jobs`: one row per piece of long work run in its own process (`herd jobs run ID`):
  kind, state (queued, running, succeeded, failed, cancelled), progress 0..1, the tail of its
  log, parameters and result as JSON, who started it, the error, times, the heartbeat of the
  process running it (pid, host) and a cancel request it watches for. `scratch` lists the
  temporary files it writes, so whoever finds it dead (a stale heartbeat) removes them.
- `models.parent_id`, `models.recipe`, `models.created_by`: a model made from another one
  (quantized, pruned) names its parent, how it was made (ftype, pruned layers, requantized,
  llama.cpp version) and who made it.
- `evaluations`: one row per model per metric measured by an evaluation job (file size,
  peak RSS and the estimate, prefill/decode tokens/s, perplexity, reference log-likelihood),
  with the settings it was measured with (context, threads, text and its sha256, ...).
- `rollouts`: one row per canary, promotion, rollback or automatic rollback of an alias:
  who, when, the candidate deployment and model, the weights and states before and after,
  the evaluations and signals cited, the retraining decision it executed, and for a
  promotion until when the previous version stays deployed at weight 0.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default=sa.text("'queued'"), nullable=False),
        sa.Column("progress", sa.Double(), server_default=sa.text("0"), nullable=False),
        sa.Column("log_tail", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column(
            "params",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("started_by", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "scratch",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_jobs_state"),
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name=op.f("ck_jobs_progress")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_kind_created_at", "jobs", ["kind", "created_at"])
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.add_column("models", sa.Column("parent_id", sa.BigInteger(), nullable=True))
    op.add_column(
        "models", sa.Column("recipe", postgresql.JSONB(astext_type=sa.Text()), nullable=True)
    )
    op.add_column("models", sa.Column("created_by", sa.Text(), nullable=True))
    op.create_foreign_key(
        op.f("fk_models_parent_id_models"),
        "models",
        "models",
        ["parent_id"],
        ["id"],
        ondelete="SET NULL",
    )


    op.create_table(
        "evaluations",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("unit", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column(
            "settings",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_evaluations_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_evaluations_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    op.create_index(
        "ix_evaluations_model_id_metric_created_at",
        "evaluations",
        ["model_id", "metric", "created_at"],
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("alias", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("candidate_deployment_id", sa.BigInteger(), nullable=True),
        sa.Column("candidate_model_id", sa.BigInteger(), nullable=True),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "evaluation",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "signals",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("decision_id", sa.BigInteger(), nullable=True),
        sa.Column("decided_by", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("grace_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "action IN ('canary', 'promote', 'rollback', 'auto_rollback')",
            name=op.f("ck_rollouts_action"),
        ),
        sa.ForeignKeyConstraint(
            ["candidate_model_id"], ["models.id"],
            name=op.f("fk_rollouts_candidate_model_id_models"), ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["decision_id"], ["retraining_decisions.id"],
            name=op.f("fk_rollouts_decision_id_retraining_decisions"), ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index("ix_rollouts_alias_created_at", "rollouts", ["alias", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_rollouts_alias_created_at", table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_index("ix_evaluations_model_id_metric_created_at", table_name="evaluations")
    op.drop_table("evaluations")
    op.drop_constraint(op.f("fk_models_parent_id_models"), "models", type_="foreignkey")
    op.drop_column("models", "created_by")
    op.drop_column("models", "recipe")
    op.drop_column("models", "parent_id")
    op.drop_index("ix_jobs_state", table_name="jobs")
    op.drop_index("ix_jobs_kind_created_at", table_name="jobs")
    op.drop_table("jobs")
