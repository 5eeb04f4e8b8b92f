"""Retraining decisions operators record, with the evidence they were based on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.analytics.recommend import Action
from app.db.tables import Model, RetrainingDecision


class DecisionError(ValueError):
    """A decision that cannot be recorded as given."""


def record_decision(
    engine: Engine,
    *,
    model_id: int | None,
    alias: str | None,
    decision: Action | str,
    decided_by: str,
    period_start: datetime,
    period_end: datetime,
    note: str = "",
    recommendation: Action | str | None = None,
    signals: list[dict[str, Any]] | None = None,
) -> int:
    """Store a decision; returns its id."""
    try:
        action = Action(decision)
    except ValueError as exc:
        raise DecisionError(f"decision must be one of {[a.value for a in Action]}") from exc
    if not decided_by:
        raise DecisionError("a decision needs the name of who made it")
    if period_end <= period_start:
        raise DecisionError("the period must end after it starts")
    row = RetrainingDecision(
        model_id=model_id,
        alias=alias,
        decision=action.value,
        recommendation=Action(recommendation).value if recommendation else None,
        note=note,
        decided_by=decided_by,
        period_start=period_start,
        period_end=period_end,
        signals=signals or [],
    )
    with Session(engine) as session, session.begin():
        session.add(row)
        session.flush()
        return row.id


def list_decisions(
    engine: Engine, model_id: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Past decisions, newest first, with the model's name."""
    stmt = (
        select(RetrainingDecision, Model.name)
        .outerjoin(Model, Model.id == RetrainingDecision.model_id)
        .order_by(RetrainingDecision.created_at.desc(), RetrainingDecision.id.desc())
        .limit(limit)
    )
    if model_id is not None:
        stmt = stmt.where(RetrainingDecision.model_id == model_id)
    with Session(engine) as session:
        return [
            {
                "id": d.id,
                "created_at": d.created_at,
                "model_id": d.model_id,
                "model": name,
                "alias": d.alias,
                "decision": d.decision,
                "recommendation": d.recommendation,
                "note": d.note,
                "decided_by": d.decided_by,
                "period_start": d.period_start,
                "period_end": d.period_end,
                "signals": d.signals,
            }
            for d, name in session.execute(stmt)
        ]
