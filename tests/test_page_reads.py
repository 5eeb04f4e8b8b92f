"""Pages read through a short cache (app/ui/reads.py), yet an operator's own change shows at
once and a database outage still shows at once, cache or not."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.analytics.demo_traffic import generate_demo_traffic
from app.control.accounts import Role
from app.db.database import Database
from app.ui import resources
from tests.conftest import REPO_ROOT, log_in_as
from tests.gateway_harness import embedded_postgres


def test_a_tag_added_on_feedback_review_shows_on_the_next_run(
    dashboard_env: None, database: Database
) -> None:
    generate_demo_traffic(database.engine, 2_000, days=2, seed=0.3, now=datetime.now(UTC))
    app = AppTest.from_file(str(REPO_ROOT / "pages" / "feedback_review.py"), default_timeout=60)
    log_in_as(app, "olivia", Role.OPERATOR)
    app.run()
    assert not app.exception, app.exception
    assert any(m.value == "Tags: none" for m in app.markdown)
    app.text_input(key="new_tag").input("refund")
    app.button(key="FormSubmitter:add_tag-Add tag").click().run()
    assert not app.exception, app.exception
    # The exchange was read (and cached) a moment ago: the write must have cleared it.
    assert any(m.value == "Tags: `refund`" for m in app.markdown)


def test_overview_says_database_unavailable_at_once_though_its_reads_are_cached(
    monkeypatch: pytest.MonkeyPatch, own_postgres: tuple[Path, str], tmp_path: Path
) -> None:
    pgdata, url = own_postgres
    monkeypatch.setenv("HERD_DATABASE_URL", url)
    monkeypatch.setenv("HERD_HOME", str(tmp_path / "home"))
    app = AppTest.from_file(str(REPO_ROOT / "pages" / "overview.py"), default_timeout=60)
    log_in_as(app, "vic", Role.VIEWER)
    app.run()
    assert not app.exception and not app.error
    embedded_postgres(pgdata, "stop")
    try:
        app.run()  # within the cache's few seconds
        assert not app.exception, app.exception
        assert any("Database unavailable" in e.value for e in app.error)
    finally:
        embedded_postgres(pgdata, "start")


def test_settings_are_built_once_per_herd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_LOG_LEVEL", "warning")
    first = resources.settings()
    assert resources.settings() is first  # not parsed again on the next call
    monkeypatch.setenv("HERD_LOG_LEVEL", "debug")
    changed = resources.settings()
    assert changed is not first and changed.log_level == "debug"
