"""Feedback review: browse rated conversations, read one, tag it, correct its answer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.analytics.queries import fetch_rows
from app.db.tables import FeedbackCorrection, FeedbackTag


class ReviewError(ValueError):
    """A review action that cannot be done as asked."""


@dataclass(frozen=True)
class ReviewFilter:
    """Which rated conversations to list; None means 'any'."""

    rating: int | None = None  # 1 or -1: the net rating's sign
    model_id: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    search: str | None = None  # in the comment, the prompt or the response
    tag: str | None = None
    corrected: bool | None = None
    limit: int = 50
    offset: int = 0


# One row per rated request: votes summed, latest comment, tags and correction state. The
# votes in the window are summed by the feedback_reviews rollup (revision 0008) for every
# request whose votes all fall in the window; only requests with votes on both sides of a
# window edge are summed here from their votes. Ordered by the rollup's index, so the list
# reads about as many rows as it shows.
LIST_SQL = text(
    """
    WITH f AS (
      SELECT v.request_id, v.net, v.votes, v.rated_at, v.comment
      FROM feedback_reviews v
      WHERE (CAST(:start AS timestamptz) IS NULL OR v.first_voted_at >= :start)
        AND (CAST(:end AS timestamptz) IS NULL OR v.last_voted_at < :end)
      UNION ALL
      -- the same column types as the rollup's, so the planner can merge the two in order
      SELECT request_id, CAST(sum(rating) AS integer), CAST(count(*) AS integer),
             max(updated_at),
             (array_agg(comment ORDER BY updated_at DESC)
               FILTER (WHERE coalesce(comment, '') <> ''))[1]
      FROM feedback
      WHERE request_id IN (
          SELECT request_id FROM feedback_reviews
          WHERE votes > 1
            AND ((first_voted_at < :start AND last_voted_at >= :start)
                 OR (first_voted_at < :end AND last_voted_at >= :end)))
        AND (CAST(:start AS timestamptz) IS NULL OR created_at >= :start)
        AND (CAST(:end AS timestamptz) IS NULL OR created_at < :end)
      GROUP BY request_id
    )
    SELECT r.id AS request_id, f.rated_at, r.created_at, r.alias, m.name AS model, f.net,
           f.votes, f.comment, left(msg.response, 200) AS response_start,
           ARRAY(SELECT t.tag FROM feedback_tags t WHERE t.request_id = r.id ORDER BY t.tag)
             AS tags,
           (c.request_id IS NOT NULL) AS corrected
    FROM f
    JOIN requests r ON r.id = f.request_id
    LEFT JOIN models m ON m.id = r.model_id
    LEFT JOIN messages msg ON msg.request_id = r.id
    LEFT JOIN feedback_corrections c ON c.request_id = r.id
    -- sign(net) = :rating, spelled so the planner estimates it from net's statistics
    WHERE (CAST(:rating AS integer) IS NULL OR (:rating = 1 AND f.net > 0)
           OR (:rating = -1 AND f.net < 0))
      AND (CAST(:model_id AS bigint) IS NULL OR r.model_id = :model_id)
      AND (CAST(:search AS text) IS NULL
           OR strpos(lower(coalesce(f.comment, '')), lower(:search)) > 0
           OR strpos(lower(coalesce(msg.response, '')), lower(:search)) > 0
           OR strpos(lower(coalesce(msg.prompt::text, '')), lower(:search)) > 0)
      AND (CAST(:tag AS text) IS NULL
           OR EXISTS (SELECT 1 FROM feedback_tags t WHERE t.request_id = r.id AND t.tag = :tag))
      AND (CAST(:corrected AS boolean) IS NULL OR (c.request_id IS NOT NULL) = :corrected)
    ORDER BY f.rated_at DESC, f.request_id
    LIMIT :limit OFFSET :offset
    """
)

CONVERSATION_SQL = text(
    """
    SELECT r.id AS request_id, r.created_at, r.alias, r.model_id, m.name AS model,
           r.session_id, r.total_ms, msg.prompt, msg.response,
           c.response AS correction, c.corrected_by, c.updated_at AS corrected_at
    FROM requests r
    LEFT JOIN models m ON m.id = r.model_id
    LEFT JOIN messages msg ON msg.request_id = r.id
    LEFT JOIN feedback_corrections c ON c.request_id = r.id
    WHERE r.id = :request_id
    """
)

VOTES_SQL = text(
    """
    SELECT rating, comment, user_id, created_at, updated_at FROM feedback
    WHERE request_id = :request_id ORDER BY created_at
    """
)


def list_rated(engine: Engine, f: ReviewFilter) -> list[dict[str, Any]]:
    """Rated conversations matching f, most recently rated first."""
    if f.rating not in (None, 1, -1):
        raise ReviewError("rating filter must be 1, -1 or None")
    params = {
        "rating": f.rating,
        "model_id": f.model_id,
        "start": f.start,
        "end": f.end,
        "search": f.search or None,
        "tag": f.tag or None,
        "corrected": f.corrected,
        "limit": f.limit,
        "offset": f.offset,
    }
    return fetch_rows(engine, LIST_SQL, params)


def conversation(engine: Engine, request_id: uuid.UUID) -> dict[str, Any] | None:
    """The full exchange of one request: prompt messages, answer, votes, tags, correction."""
    rows = fetch_rows(engine, CONVERSATION_SQL, {"request_id": request_id})
    if not rows:
        return None
    found = rows[0]
    found["votes"] = fetch_rows(engine, VOTES_SQL, {"request_id": request_id})
    found["tags"] = tags(engine, request_id)
    return found


def tags(engine: Engine, request_id: uuid.UUID) -> list[str]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(FeedbackTag.tag)
                .where(FeedbackTag.request_id == request_id)
                .order_by(FeedbackTag.tag)
            )
        )


def clean_tag(tag: str) -> str:
    cleaned = " ".join(tag.strip().lower().split())
    if not 1 <= len(cleaned) <= 64:
        raise ReviewError("a tag has 1 to 64 characters")
    return cleaned


def add_tag(engine: Engine, request_id: uuid.UUID, tag: str, by: str | None) -> str:
    """Tag a conversation (idempotent); returns the tag as stored."""
    cleaned = clean_tag(tag)
    with engine.begin() as conn:
        conn.execute(
            insert(FeedbackTag)
            .values(request_id=request_id, tag=cleaned, created_by=by)
            .on_conflict_do_nothing(index_elements=["request_id", "tag"])
        )
    return cleaned


def remove_tag(engine: Engine, request_id: uuid.UUID, tag: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            delete(FeedbackTag).where(
                FeedbackTag.request_id == request_id, FeedbackTag.tag == clean_tag(tag)
            )
        )


def save_correction(engine: Engine, request_id: uuid.UUID, response: str, by: str) -> None:
    """Store (or replace) the operator's corrected answer for a request."""
    if not response.strip():
        raise ReviewError("the corrected answer is empty")
    if not by:
        raise ReviewError("a correction needs the name of who wrote it")
    stmt = insert(FeedbackCorrection).values(
        request_id=request_id, response=response, corrected_by=by
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["request_id"],
        set_={"response": response, "corrected_by": by, "updated_at": func.now()},
    )
    with engine.begin() as conn:
        conn.execute(stmt)


def delete_correction(engine: Engine, request_id: uuid.UUID) -> None:
    with engine.begin() as conn:
        conn.execute(delete(FeedbackCorrection).where(FeedbackCorrection.request_id == request_id))


def known_tags(engine: Engine) -> list[str]:
    """Every tag operators have used, for pickers."""
    with Session(engine) as session:
        return list(session.scalars(select(FeedbackTag.tag).distinct().order_by(FeedbackTag.tag)))
