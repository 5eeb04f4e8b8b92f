"""Analytics tables: retraining decisions, review tags and corrections, and the
rollups the database's triggers fill (revisions 0005, 0008, 0019)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.tables.base import Base, now_column


class RetrainingDecision(Base):
    """What an operator decided about a model version, and the evidence they saw."""

    __tablename__ = "retraining_decisions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    alias: Mapped[str | None] = mapped_column(Text)
    decision: Mapped[str] = mapped_column(Text)
    # What Herd recommended when the decision was made, to audit where operators disagreed.
    recommendation: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str] = mapped_column(Text, server_default=text("''"))
    decided_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = now_column()
    # The period whose data the decision was based on.
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    signals: Mapped[Any] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))

    __table_args__ = (
        CheckConstraint("decision IN ('retrain', 'rollback', 'keep')", name="decision"),
        CheckConstraint("period_end > period_start", name="period"),
        Index("ix_retraining_decisions_model_id_created_at", "model_id", "created_at"),
    )


class FeedbackTag(Base):
    """An operator's label on a rated conversation (e.g. 'hallucination')."""

    __tablename__ = "feedback_tags"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = now_column()

    __table_args__ = (
        CheckConstraint("length(tag) BETWEEN 1 AND 64", name="tag"),
        Index("uq_feedback_tags_request_id_tag", "request_id", "tag", unique=True),
        Index("ix_feedback_tags_tag", "tag"),
    )


class FeedbackCorrection(Base):
    """An operator's corrected answer to a response; the 'chosen' side of a preference pair."""

    __tablename__ = "feedback_corrections"

    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True
    )
    response: Mapped[str] = mapped_column(Text)
    corrected_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()


def _counter() -> Any:
    return mapped_column(BigInteger, server_default=text("0"))


def _sum() -> Any:
    return mapped_column(Double, server_default=text("0"))


def _traffic_class() -> Any:
    # Part of the rollups' key since revision 0019: a class filter is exact at any range.
    return mapped_column(Text, primary_key=True, server_default=text("'live'"))


class RequestsHourly(Base):
    """Rollup: counts and sums per hour, alias, model, worker and traffic class; kept by
    triggers on write.

    NULL dimensions are stored as '' / 0 so they can be part of the key.
    """

    __tablename__ = "requests_hourly"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    alias: Mapped[str] = mapped_column(Text, primary_key=True)
    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    worker_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    traffic_class: Mapped[str] = _traffic_class()
    requests: Mapped[int] = _counter()
    errors: Mapped[int] = _counter()
    client_errors: Mapped[int] = _counter()
    cache_hits: Mapped[int] = _counter()
    prompt_tokens: Mapped[int] = _counter()
    completion_tokens: Mapped[int] = _counter()
    ttft_n: Mapped[int] = _counter()
    ttft_sum_ms: Mapped[float] = _sum()
    total_n: Mapped[int] = _counter()
    total_sum_ms: Mapped[float] = _sum()
    queue_n: Mapped[int] = _counter()
    queue_sum_ms: Mapped[float] = _sum()
    tps_n: Mapped[int] = _counter()
    tps_sum: Mapped[float] = _sum()
    # Feedback counts sit on the hour of the rated request.
    ratings: Mapped[int] = _counter()
    thumbs_up: Mapped[int] = _counter()
    comments: Mapped[int] = _counter()


class LatencyHourly(Base):
    """Rollup: a mergeable latency histogram (8 log bins per octave of ms) per hour."""

    __tablename__ = "latency_hourly"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    alias: Mapped[str] = mapped_column(Text, primary_key=True)
    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    worker_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    traffic_class: Mapped[str] = _traffic_class()
    metric: Mapped[str] = mapped_column(Text, primary_key=True)
    bin: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint("metric IN ('ttft', 'total', 'queue')", name="metric"),)


class RequestSession(Base):
    """Rollup: one chat session (requests sharing a session_id): when, which model, turns."""

    __tablename__ = "request_sessions"

    session_id: Mapped[str] = mapped_column(Text, primary_key=True)
    # Alias and model of the first turn.
    alias: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[int | None] = mapped_column(BigInteger)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    turns: Mapped[int] = mapped_column(Integer)
    # Turns that resent the previous turn's prompt (same prompt tokens): "regenerate".
    regenerates: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    first_prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    # Lets the next insert recognise a regenerate (same prompt length as the turn before).
    last_prompt_tokens: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_request_sessions_first_at", "first_at"),
        # Sessions still going (not over yet) are the few with a recent last turn.
        Index("ix_request_sessions_last_at", "last_at"),
    )


class SessionsHourly(Base):
    """Rollup of request_sessions per hour of the session's start, alias and model; kept by
    triggers on request_sessions ('' / 0 for NULL dimensions)."""

    __tablename__ = "sessions_hourly"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    alias: Mapped[str] = mapped_column(Text, primary_key=True)
    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sessions: Mapped[int] = _counter()
    turns: Mapped[int] = _counter()
    regenerates: Mapped[int] = _counter()
    # Sessions of a single turn so far.
    one_turn: Mapped[int] = _counter()


class FeedbackReview(Base):
    """Rollup: one row per rated request (its votes summed, latest comment, the request's
    alias, model and time), recomputed by triggers on feedback for the Feedback review list."""

    __tablename__ = "feedback_reviews"

    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True
    )
    request_created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    alias: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[int | None] = mapped_column(BigInteger)
    net: Mapped[int] = mapped_column(Integer)
    votes: Mapped[int] = mapped_column(Integer)
    # Thumbs-down votes with a comment: what the retraining signals' complaint terms read.
    down_comments: Mapped[int] = mapped_column(Integer)
    first_voted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_voted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The latest updated_at of its votes: the list's order.
    rated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    comment: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_feedback_reviews_rated_at", text("rated_at DESC"), "request_id"),
        Index(
            "ix_feedback_reviews_down_comments",
            "model_id",
            "last_voted_at",
            postgresql_where=text("down_comments > 0"),
        ),
        Index(
            "ix_feedback_reviews_multi_vote",
            "first_voted_at",
            "last_voted_at",
            postgresql_where=text("votes > 1"),
        ),
    )
