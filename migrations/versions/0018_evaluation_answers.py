"""evaluation_answers: greedy answers of evaluated models, beside the references

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02

- `evaluation_answers`: one row per model per prompt of an evaluation's prompt set (the
  feedback-derived set or an operator's JSONL file): the prompt, the reference answer, and
  the answer the model generated greedily, for reading side by side on the Evaluation page.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluation_answers",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("prompt_set", sa.Text(), nullable=False),
        sa.Column("prompt_key", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("prompt", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("answer_tokens", sa.Integer(), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_evaluation_answers_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_evaluation_answers_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_answers")),
    )
    op.create_index(
        "ix_evaluation_answers_prompt_set_created_at",
        "evaluation_answers",
        ["prompt_set", "created_at"],
    )
    op.create_index(
        "ix_evaluation_answers_model_id_prompt_key",
        "evaluation_answers",
        ["model_id", "prompt_key"],
    )


def downgrade() -> None:
    op.drop_table("evaluation_answers")
