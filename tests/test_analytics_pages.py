"""Monitoring, Retraining and Feedback review pages rendered with AppTest, empty and full."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from app.analytics.demo_traffic import generate_demo_traffic
from app.analytics.traffic import TrafficClass
from app.control.accounts import Accounts, Role
from app.db.database import Database
from tests.analytics_data import add_model, insert_feedback, insert_requests, request_row
from tests.conftest import REPO_ROOT, submit_login

PAGES = ("monitoring.py", "retraining.py", "feedback_review.py")


def _logged_in(database: Database, role: Role) -> AppTest:
    Accounts(database.engine).add("ana", "analyst password", role)
    app = AppTest.from_file(str(REPO_ROOT / "dashboard.py"), default_timeout=60)
    app.run()
    submit_login(app, "ana", "analyst password")
    assert not app.exception, app.exception
    return app


def _open(app: AppTest, page: str) -> AppTest:
    app.switch_page(f"pages/{page}").run()
    assert not app.exception, app.exception
    return app


def test_pages_refuse_without_login(dashboard_env: None) -> None:
    for page in PAGES:
        app = AppTest.from_file(str(REPO_ROOT / "pages" / page), default_timeout=30)
        app.run()
        assert not app.exception
        assert "log in" in app.warning[0].value.lower()


def test_pages_render_on_an_empty_database(dashboard_env: None, database: Database) -> None:
    app = _logged_in(database, Role.OPERATOR)
    _open(app, "monitoring.py")
    assert app.title[0].value == "Monitoring"
    assert [m.label for m in app.metric][:3] == ["Requests", "p95 TTFT", "p95 latency"]
    assert app.metric[0].value == "0"
    assert "demo-traffic" in app.info[0].value
    _open(app, "retraining.py")
    assert app.title[0].value == "Retraining"
    assert "No model version" in app.info[0].value
    _open(app, "feedback_review.py")
    assert "No rated conversations" in app.info[0].value


@pytest.fixture
def full(database: Database) -> Database:
    generate_demo_traffic(database.engine, 12_000, days=8, seed=0.5, now=datetime.now(UTC))
    return database


def test_pages_render_on_a_full_database(dashboard_env: None, full: Database) -> None:
    app = _logged_in(full, Role.OPERATOR)
    _open(app, "monitoring.py")
    # Demo traffic is synthetic: not counted until asked for, and the page says so.
    assert app.metric[0].value == "0"
    assert any("synthetic calls" in c.value for c in app.caption)
    app.multiselect(key="mon_classes").select(TrafficClass.SYNTHETIC).run()
    assert int(app.metric[0].value.replace(",", "")) > 0
    app.selectbox(key="mon_range").select("Last week").run()
    assert not app.exception, app.exception
    assert int(app.metric[0].value.replace(",", "")) > 5_000
    assert not app.info
    # The A/B tab's chart: thumbs-up with intervals beside p95 latency, per version. Only
    # the open tab is drawn.
    assert not [c for c in app.get("plotly_chart") if "p95 latency" in c.proto.spec]
    app.session_state["mon_tab"] = "Versions (A/B)"
    app.run()
    specs = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    ab = [s for s in specs if "p95 latency" in str(s["layout"].get("annotations"))]
    assert ab and len(ab[0]["data"]) == 2 and ab[0]["data"][0]["error_y"]["array"]

    _open(app, "retraining.py")
    app.multiselect(key="rt_classes").select(TrafficClass.SYNTHETIC).run()
    # One subheader per model version, then the Datasets section's "Dataset jobs".
    assert [s.value for s in app.subheader][4:] == ["Dataset jobs"]
    assert any("rollback" in e.value for e in app.error)  # the planted regression
    # Record the decision the page recommends for the first version.
    app.button(key="FormSubmitter:decide_0-Record decision").click().run()
    assert not app.exception, app.exception
    with full.engine.connect() as conn:
        decided = conn.execute(
            text("SELECT decided_by, recommendation, signals FROM retraining_decisions")
        ).one()
    assert decided.decided_by == "ana" and len(decided.signals) == 5
    _open(app, "retraining.py")
    assert app.dataframe  # the past decisions table and its period's charts

    _open(app, "feedback_review.py")
    assert app.title[0].value == "Feedback review"
    assert len(app.dataframe[0].value) > 0
    app.text_area(key="correction_text").input("A better answer.")
    app.button(key="FormSubmitter:correction-Save correction").click().run()
    assert not app.exception, app.exception
    with full.engine.connect() as conn:
        saved = conn.execute(text("SELECT response FROM feedback_corrections")).scalar_one()
    assert saved == "A better answer."


def test_viewer_reads_but_cannot_act(dashboard_env: None, full: Database) -> None:
    app = _logged_in(full, Role.VIEWER)
    _open(app, "retraining.py")
    labels = [b.label for b in app.button]
    assert "Record decision" not in labels and "Export" not in labels
    assert any("operator role" in c.value for c in app.caption)
    _open(app, "feedback_review.py")
    assert "Save correction" not in [b.label for b in app.button]


def test_monitoring_compares_semantic_cache_hits_with_fresh_answers(
    dashboard_env: None, database: Database
) -> None:
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO aliases (alias, semantic_cache_alias, semantic_cache_threshold) "
                "VALUES ('chat', 'embed', 0.9)"
            )
        )
        # Four fresh answers (one up, one down) and two semantic hits (both up).
        for i, (similarity, rating) in enumerate(
            [(None, 1), (None, -1), (None, None), (None, None), (0.93, 1), (0.97, 1)]
        ):
            request_id = conn.execute(
                text(
                    "INSERT INTO requests (id, alias, endpoint, status, cache_hit, "
                    "cache_similarity) VALUES (gen_random_uuid(), 'chat', 'chat.completions', "
                    "'ok', :hit, :sim) RETURNING id"
                ),
                {"hit": similarity is not None, "sim": similarity},
            ).scalar_one()
            if rating is not None:
                conn.execute(
                    text("INSERT INTO feedback (request_id, rating, user_id) VALUES (:r, :v, :u)"),
                    {"r": request_id, "v": rating, "u": f"u{i}"},
                )
    app = _open(_logged_in(database, Role.VIEWER), "monitoring.py")
    app.session_state["mon_tab"] = "Traffic"
    app.run()
    assert "Semantic cache" in [s.value for s in app.subheader]
    [table] = [d.value for d in app.dataframe if "hit rate" in d.value.columns]
    row = table.iloc[0]
    assert (row["alias"], row["chat calls"], row["semantic hits"]) == ("chat", 6, 2)
    assert abs(row["hit rate"] - 2 / 6) < 1e-9
    assert (row["thumbs-up cached"], row["thumbs-up fresh"]) == (1.0, 0.5)
    assert abs(row["mean similarity of hits"] - 0.95) < 1e-6


def test_a_version_with_too_little_traffic_is_not_enough_data(
    dashboard_env: None, database: Database
) -> None:
    model_id = add_model(database.engine, "few.gguf")
    now = datetime.now(UTC)
    insert_requests(
        database.engine,
        [request_row(now - timedelta(hours=h), model_id=model_id) for h in range(1, 6)],
    )
    app = _logged_in(database, Role.OPERATOR)
    _open(app, "retraining.py")
    assert "few.gguf" in app.subheader[0].value
    # Every signal lacks data: the page says so, not a green "keep".
    assert any("Recommendation: **not enough data**" in i.value for i in app.info)
    assert not [s.value for s in app.success if "Recommendation" in s.value]
    assert "no signal could be computed" in app.markdown[0].value


def test_feedback_review_lists_request_ids_as_text(dashboard_env: None, database: Database) -> None:
    row = request_row(datetime.now(UTC) - timedelta(minutes=5))
    insert_requests(database.engine, [row])
    insert_feedback(database.engine, [{"request_id": row["id"], "rating": -1, "comment": "no"}])
    app = _logged_in(database, Role.OPERATOR)
    _open(app, "feedback_review.py")
    assert list(app.dataframe[0].value["request_id"]) == [str(row["id"])]
    assert str(row["id"]) in app.caption[0].value  # the exchange below names the same id
