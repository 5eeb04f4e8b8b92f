"""embeddings: embedding deployments and the semantic cache

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

- `models.chat_template_tools`: the GGUF's chat template renders tools (GET /v1/models/{id}
  reports it; rows scanned before this revision say false until their file is scanned
  anew, e.g. removed from the store and added again).
- `deployments.embeddings`, `deployments.pooling`: replicas serve POST /v1/embeddings
  (only), pooling token vectors by the GGUF's own pooling or the one chosen.
- `aliases.semantic_cache_alias`, `aliases.semantic_cache_threshold`: an alias opts in to
  the semantic cache by naming the embedding alias that embeds its questions, and the cosine
  similarity above which an earlier answer is reused.
- `requests.cache_similarity`: the similarity of the cached question a semantic-cache hit
  answered from (NULL for misses and for exact-cache hits).
- `semantic_cache`: earlier answers with the embedding of their question. The vector is kept
  as real[] so this revision needs no extension; the gateway creates pgvector's extension and
  one HNSW index per vector size (an expression index on embedding::vector(N)) when an alias
  first uses the cache, and says why the cache is off when it cannot.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "models",
        sa.Column(
            "chat_template_tools", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
    )
    op.add_column(
        "deployments",
        sa.Column("embeddings", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column(
        "deployments",
        sa.Column("pooling", sa.Text(), server_default=sa.text("'model'"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_deployments_pooling"),
        "deployments",
        "pooling IN ('model', 'mean', 'cls', 'last')",
    )
    op.add_column("aliases", sa.Column("semantic_cache_alias", sa.Text(), nullable=True))
    op.add_column(
        "aliases",
        sa.Column(
            "semantic_cache_threshold",
            sa.Double(),
            server_default=sa.text("0.95"),
            nullable=False,
        ),
    )
    op.create_check_constraint(
        op.f("ck_aliases_semantic_cache_threshold"),
        "aliases",
        "semantic_cache_threshold > 0 AND semantic_cache_threshold <= 1",
    )
    op.add_column("requests", sa.Column("cache_similarity", sa.REAL(), nullable=True))
    op.create_table(
        "semantic_cache",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("alias", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("embedding", postgresql.ARRAY(sa.REAL()), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("finish_reason", sa.Text(), nullable=False),
        sa.Column("usage", postgresql.JSONB(), nullable=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("dims > 0", name=op.f("ck_semantic_cache_dims")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_semantic_cache")),
    )
    op.create_index("ix_semantic_cache_alias_scope", "semantic_cache", ["alias", "scope"])


def downgrade() -> None:
    op.drop_index("ix_semantic_cache_alias_scope", table_name="semantic_cache")
    op.drop_table("semantic_cache")
    op.drop_column("requests", "cache_similarity")
    op.drop_constraint(op.f("ck_aliases_semantic_cache_threshold"), "aliases", type_="check")
    op.drop_column("aliases", "semantic_cache_threshold")
    op.drop_column("aliases", "semantic_cache_alias")
    op.drop_constraint(op.f("ck_deployments_pooling"), "deployments", type_="check")
    op.drop_column("deployments", "pooling")
    op.drop_column("deployments", "embeddings")
    op.drop_column("models", "chat_template_tools")
