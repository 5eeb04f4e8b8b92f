"""Dashboard pages rendered with Streamlit's AppTest against a real database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from streamlit.testing.v1 import AppTest

from app.control.accounts import Accounts, Role
from app.db.database import Database
from app.store.catalog import ModelStore
from tests.conftest import REPO_ROOT, log_in_as, run_page, submit_login

ENTRY = str(REPO_ROOT / "dashboard.py")


def _app() -> AppTest:
    app = AppTest.from_file(ENTRY, default_timeout=30)
    app.run()
    assert not app.exception, app.exception
    return app


def _open(app: AppTest, page: str) -> AppTest:
    # AppTest reruns the current page's script, not the entry script, so the navigation
    # rebuilt after login is not exercised here; open the page as a link would.
    app.switch_page(f"pages/{page}").run()
    assert not app.exception, app.exception
    return app


def test_anonymous_visitor_sees_only_login_and_chat(dashboard_env: None) -> None:
    app = _app()
    assert app.title[0].value == "Herd"
    assert [t.value for t in app.title] == ["Herd"]
    assert app.text_input(key="login_password") is not None
    # AppTest has no public view of the navigation; this private map is what st.navigation
    # registered for this visitor.
    pages = [p["page_name"] for p in app._registered_pages.values()]
    assert pages == ["Log in", "Chat"]
    # End users chat without logging in (no gateway runs here: the page says so, no trace).
    _open(app, "chat.py")
    assert app.title[0].value == "Chat"
    assert not app.warning
    assert "not reachable" in app.error[0].value


def test_operator_pages_refuse_without_login(dashboard_env: None) -> None:
    for page in ("overview.py", "models.py"):
        app = AppTest.from_file(str(REPO_ROOT / "pages" / page), default_timeout=30)
        app.run()
        assert not app.exception
        assert "log in" in app.warning[0].value.lower()
        assert not app.title  # stopped before rendering anything of the page


def test_logged_in_navigation_lists_every_operator_page(dashboard_env: None) -> None:
    # Seeding the session before the first run makes AppTest build the logged-in navigation,
    # which fails if any registered page file is missing.
    app = AppTest.from_file(ENTRY, default_timeout=30)
    log_in_as(app, "ops", Role.ADMIN)  # admins see every page
    app.run()
    assert not app.exception, app.exception
    assert app.title[0].value == "Overview"
    pages = {p["page_name"] for p in app._registered_pages.values()}
    assert {"Routing", "Chat"} <= pages
    registered = {p.name for p in (REPO_ROOT / "pages").glob("*.py")} - {"login.py"}
    for page in sorted(registered):
        _open(app, page)
        assert app.title, page


def test_wrong_password_gives_a_clear_message(dashboard_env: None, database: Database) -> None:
    Accounts(database.engine).add("ops", "right password", Role.OPERATOR)
    app = _app()
    submit_login(app, "ops", "wrong password")
    assert not app.exception
    assert app.error[0].value == "Wrong operator name or password."


def test_login_shows_overview_and_models(
    dashboard_env: None,
    database: Database,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
) -> None:
    Accounts(database.engine).add("ops", "right password", Role.OPERATOR)
    store = ModelStore(database.engine, models_dir)
    store.add(tiny_gguf("tiny.gguf"))
    (models_dir / "broken.gguf").write_text("nope")
    store.scan()

    app = _app()
    submit_login(app, "ops", "right password")
    assert not app.exception, app.exception
    assert not app.error
    assert app.session_state["herd_operator"].name == "ops"
    _open(app, "overview.py")
    assert app.title[0].value == "Overview"
    assert app.metric[0].value == "1"  # one valid model
    assert "1 invalid" in app.warning[0].value

    _open(app, "models.py")
    assert app.title[0].value == "Models"
    table = app.dataframe[0].value
    assert list(table["name"]) == ["tiny.gguf", "broken.gguf"]
    assert list(table["status"]) == ["valid", "invalid"]
    assert "wrong magic" in table["error"][1]


def test_viewer_cannot_change_the_store(dashboard_env: None, database: Database) -> None:
    Accounts(database.engine).add("eve", "viewer password", Role.VIEWER)
    app = _app()
    submit_login(app, "eve", "viewer password")
    _open(app, "models.py")
    assert app.title[0].value == "Models"
    assert not [b for b in app.button if b.label == "Rescan the store"]


def test_overview_names_the_embedded_database_embedded(
    dashboard_env: None, database: Database, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    # `herd up` hands its dashboard the embedded server's URL in HERD_DATABASE_URL; the
    # server is found by its folder under HERD_HOME (here: the test session's own server).
    socket_dir = make_url(db_url).query.get("host")
    if not isinstance(socket_dir, str) or not (Path(socket_dir) / "postmaster.pid").exists():
        pytest.skip("the tests run on an external PostgreSQL (HERD_TEST_DATABASE_URL)")
    monkeypatch.setenv("HERD_HOME", str(Path(socket_dir).parent))
    app = run_page("overview.py", Role.VIEWER)
    assert app.markdown[-1].value.startswith("embedded PostgreSQL, server version")

    # The same URL with another HERD_HOME is a server Herd does not run.
    monkeypatch.setenv("HERD_HOME", str(Path(socket_dir).parent / "elsewhere"))
    app = run_page("overview.py", Role.VIEWER)
    assert app.markdown[-1].value.startswith("external PostgreSQL (HERD_DATABASE_URL)")
