"""End-user feedback on responses: one row per (response, user), a second vote updates it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from psycopg.errors import ForeignKeyViolation
from sqlalchemy import Engine, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from app.db.tables import Feedback
from app.gateway.request_log import without_nul


class UnknownResponseError(LookupError):
    """No request with that response id has been recorded."""


@dataclass(frozen=True)
class FeedbackRow:
    id: int
    request_id: uuid.UUID
    rating: int
    comment: str | None
    user_id: str
    created_at: datetime
    updated_at: datetime


class FeedbackStore:
    """Writes `feedback` synchronously: a click must be stored before it is acknowledged."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def upsert(
        self, request_id: uuid.UUID, rating: int, comment: str | None, user_id: str
    ) -> FeedbackRow:
        # PostgreSQL's text refuses NUL characters; a comment must not fail for one.
        comment, user_id = without_nul(comment), without_nul(user_id)
        values = insert(Feedback).values(
            request_id=request_id, rating=rating, comment=comment, user_id=user_id
        )
        stmt = values.on_conflict_do_update(
            index_elements=[Feedback.request_id, Feedback.user_id],
            set_={"rating": rating, "comment": comment, "updated_at": func.now()},
        ).returning(*Feedback.__table__.columns)
        try:
            with self.engine.begin() as conn:
                row = conn.execute(stmt).mappings().one()
        except IntegrityError as exc:
            if isinstance(exc.orig, ForeignKeyViolation):
                raise UnknownResponseError(str(request_id)) from None
            raise
        return FeedbackRow(
            id=row["id"],
            request_id=row["request_id"],
            rating=row["rating"],
            comment=row["comment"],
            user_id=row["user_id"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )
