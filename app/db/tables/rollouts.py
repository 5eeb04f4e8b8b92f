"""Rollouts: a new model version moved onto an alias step by step."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.tables.base import Base, now_column


class Rollout(Base):
    """A canary, promotion or rollback of an alias: who, when, what changed, the evidence.

    Written only by app.rollouts.actions.Rollouts.
    """

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    # No foreign key: the record outlives a deleted deployment.
    candidate_deployment_id: Mapped[int | None] = mapped_column(BigInteger)
    candidate_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL")
    )
    # [{deployment_id, model_id, model, weight, state}] of the alias before and after.
    before: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    after: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    evaluation: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, server_default=text("'[]'::jsonb")
    )
    signals: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    decision_id: Mapped[int | None] = mapped_column(
        ForeignKey("retraining_decisions.id", ondelete="SET NULL")
    )
    decided_by: Mapped[str] = mapped_column(Text)
    note: Mapped[str] = mapped_column(Text, server_default=text("''"))
    grace_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When a later action superseded this one (a canary promoted or rolled back, a
    # promotion rolled back or its grace period over).
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = now_column()

    __table_args__ = (
        CheckConstraint(
            "action IN ('canary', 'promote', 'rollback', 'auto_rollback')", name="action"
        ),
        Index("ix_rollouts_alias_created_at", "alias", "created_at"),
    )
