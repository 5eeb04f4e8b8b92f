"""Evaluation runs and their answers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Double,
    ForeignKey,
    Index,
    Integer,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.tables.base import Base, now_column


class Evaluation(Base):
    """One measured metric of one model (perplexity, tokens/s, RSS ...), with its settings."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    metric: Mapped[str] = mapped_column(Text)
    value: Mapped[float] = mapped_column(Double)
    unit: Mapped[str] = mapped_column(Text, server_default=text("''"))
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = now_column()

    __table_args__ = (
        Index("ix_evaluations_model_id_metric_created_at", "model_id", "metric", "created_at"),
    )


class EvaluationAnswer(Base):
    """The answer one model generated greedily to one prompt of an evaluation's prompt set,
    beside the reference answer, for reading side by side.

    Written only by app.evaluation.answers.
    """

    __tablename__ = "evaluation_answers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # 'feedback' or the prompt file's name; prompt_key (sha256 of the messages and the
    # reference) matches the same prompt across models and runs.
    prompt_set: Mapped[str] = mapped_column(Text)
    prompt_key: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    prompt: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    reference: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    answer_tokens: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = now_column()

    __table_args__ = (
        Index("ix_evaluation_answers_prompt_set_created_at", "prompt_set", "created_at"),
        Index("ix_evaluation_answers_model_id_prompt_key", "model_id", "prompt_key"),
    )
