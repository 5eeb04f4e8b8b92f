"""Batch lines in the request log are left out of engagement metrics (and, by default, of
Monitoring's counts), at raw-row and at rollup ranges; a scope may include them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from app.analytics.monitoring import engagement_series
from app.analytics.scope import Scope
from app.analytics.summary import summary
from app.db.database import Database
from tests.analytics_data import insert_feedback, insert_requests, request_row


def test_batch_rows_leave_engagement_out_unless_asked(database: Database) -> None:
    engine = database.engine
    at = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(hours=1)
    users = [request_row(at, session_id=f"s{i}", batch_id=None) for i in range(3)]
    batch = [request_row(at, session_id=None, batch_id="batch_abc") for _ in range(5)]
    insert_requests(engine, users + batch)
    insert_feedback(engine, [{"request_id": users[0]["id"], "rating": 1, "user_id": "u"}])

    raw = Scope(start=at - timedelta(minutes=30), end=at + timedelta(minutes=30))
    long = Scope(start=at - timedelta(days=3), end=at + timedelta(hours=2))  # rollups
    for scope in (raw, long):
        plain = summary(engine, scope)
        assert plain.requests == 3 and plain.feedback_rate == 1 / 3
        both = summary(engine, replace(scope, include_batch=True))
        assert both.requests == 8 and both.feedback_rate == 1 / 8
        series = engagement_series(engine, scope)
        assert sum(int(r["responses"]) for r in series) == 3
        assert (
            sum(
                int(r["responses"])
                for r in engagement_series(engine, replace(scope, include_batch=True))
            )
            == 8
        )
