"""Batch lines in the request log are left out of engagement metrics (and, by default, of
Monitoring's counts), at raw-row and at rollup ranges; a scope may include them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from streamlit.testing.v1 import AppTest

from app.analytics.monitoring import engagement_series
from app.analytics.scope import Scope
from app.analytics.traffic import TrafficClass, parse_classes
from app.control.accounts import Accounts, Role
from app.db.database import Database
from tests.analytics_data import insert_feedback, insert_requests, request_row, summary
from tests.conftest import REPO_ROOT, submit_login

WITH_BATCH = parse_classes(["batch"])


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
        both = summary(engine, replace(scope, classes=WITH_BATCH))
        assert both.requests == 8 and both.feedback_rate == 1 / 8
        series = engagement_series(engine, scope)
        assert sum(int(r["responses"]) for r in series) == 3
        assert (
            sum(
                int(r["responses"])
                for r in engagement_series(engine, replace(scope, classes=WITH_BATCH))
            )
            == 8
        )


def test_monitoring_counts_batch_lines_only_when_asked(
    dashboard_env: None, database: Database
) -> None:
    at = datetime.now(UTC) - timedelta(minutes=10)
    rows = [request_row(at, session_id=None, batch_id=None) for _ in range(2)]
    rows += [request_row(at, session_id=None, batch_id="batch_x") for _ in range(3)]
    insert_requests(database.engine, rows)
    Accounts(database.engine).add("ana", "analyst password", Role.VIEWER)
    app = AppTest.from_file(str(REPO_ROOT / "dashboard.py"), default_timeout=60)
    app.run()
    submit_login(app, "ana", "analyst password")
    app.switch_page("pages/monitoring.py").run()
    assert not app.exception, app.exception

    def requests_tile() -> str:
        return str(next(m.value for m in app.metric if m.label == "Requests"))

    assert requests_tile() == "2"
    app.multiselect(key="mon_classes").select(TrafficClass.BATCH).run()
    assert not app.exception, app.exception
    assert requests_tile() == "5"
