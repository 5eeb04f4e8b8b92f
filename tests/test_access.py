"""Access: login lockouts, session expiry, roles checked by every operator page on the
server, secrets kept out of logs and rows, and loopback-only defaults."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from app.config import Settings
from app.control.accounts import Accounts, LoginLockedError, Role
from app.control.keys import ApiKeyError, ApiKeys
from app.db.database import Database
from app.gateway.service import gateway_service
from app.processes.launcher import dashboard_service
from app.store.catalog import ModelStore
from tests.conftest import REPO_ROOT, log_in_as, submit_login
from tests.gateway_harness import ServedAlias, served_alias, wait_for

PAGES = REPO_ROOT / "pages"
# Pages an end user may open: they check nothing or check something else.
PUBLIC_PAGES = {"login.py", "chat.py"}
ADMIN_PAGES = {"users.py", "audit.py"}
OPERATOR_PAGES = sorted(p.name for p in PAGES.glob("*.py") if p.name not in PUBLIC_PAGES)


# -- login lockout --------------------------------------------------------------------------
def test_failed_logins_lock_the_name_in_the_database(database: Database) -> None:
    accounts = Accounts(database.engine, max_failures=3, lockout_s=1.5)
    accounts.add("ops", "right password", Role.OPERATOR)
    for _ in range(3):
        assert accounts.verify("ops", "wrong password") is None
    # Locked: even the right password is refused, by another process's Accounts too.
    other_process = Accounts(database.engine, max_failures=3, lockout_s=1.5)
    with pytest.raises(LoginLockedError) as locked:
        other_process.verify("ops", "right password")
    assert 1 <= locked.value.retry_after_s <= 2
    # Names without an account lock the same way: a lockout reveals nothing.
    for _ in range(3):
        assert accounts.verify("nobody", "guess") is None
    with pytest.raises(LoginLockedError):
        accounts.verify("nobody", "guess")

    time.sleep(1.6)
    assert accounts.verify("ops", "right password") is not None
    # A success clears the count: two more failures do not lock.
    for _ in range(2):
        assert accounts.verify("ops", "wrong password") is None
    assert accounts.verify("ops", "right password") is not None


def _login_page() -> AppTest:
    app = AppTest.from_file(str(PAGES / "login.py"), default_timeout=30)
    app.run()
    assert not app.exception, app.exception
    return app


def _submit(app: AppTest, name: str, password: str) -> None:
    submit_login(app, name, password)
    assert not app.exception, app.exception


def test_revoking_by_a_name_that_only_looks_like_an_id_is_refused_cleanly(
    database: Database,
) -> None:
    """'³' passes str.isdigit() but not int(); an id past bigint is no id: both are names
    here, and no key has them (the admin API fuzz once got a 500 for DELETE /keys/%C2%B3)."""
    keys = ApiKeys(database.engine)
    created = keys.create("kept")
    for name in ("³", "٣", "9" * 30):
        with pytest.raises(ApiKeyError, match="no active key named"):
            keys.revoke(name)
    assert keys.revoke(str(created.id)) == [created.id]


def test_login_page_says_when_a_name_is_locked(
    dashboard_env: None, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERD_LOGIN_MAX_FAILURES", "2")
    monkeypatch.setenv("HERD_LOGIN_LOCKOUT_S", "60")
    Accounts(database.engine).add("ops", "right password", Role.OPERATOR)
    app = _login_page()
    for _ in range(2):
        _submit(app, "ops", "wrong password")
        assert app.error[0].value == "Wrong operator name or password."
    _submit(app, "ops", "right password")
    assert "Too many failed logins" in app.error[0].value
    assert "60 seconds" in app.error[0].value
    assert "herd_operator" not in app.session_state


def test_passwords_are_never_logged_or_stored(
    dashboard_env: None, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Password-123"
    Accounts(database.engine).add("ops", secret, Role.OPERATOR)
    app = _login_page()
    _submit(app, "ops", secret + "x")
    _submit(app, "ops", secret)
    assert app.session_state["herd_operator"].name == "ops"
    assert secret not in caplog.text
    with database.engine.connect() as conn:
        dumped = conn.execute(
            text("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM operators) t")
        ).scalar_one()
        attempts = conn.execute(text("SELECT count(*) FROM login_attempts")).scalar_one()
    assert secret not in dumped and "$argon2" in dumped
    assert attempts == 0  # the success cleared the failure


# -- sessions expire --------------------------------------------------------------------------
def test_sessions_expire(dashboard_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_SESSION_TTL_S", "60")
    fresh = AppTest.from_file(str(PAGES / "overview.py"), default_timeout=30)
    log_in_as(fresh, "ops", Role.VIEWER, time.time() - 30)
    fresh.run()
    assert not fresh.exception, fresh.exception
    assert fresh.title[0].value == "Overview"

    stale = AppTest.from_file(str(PAGES / "overview.py"), default_timeout=30)
    log_in_as(stale, "ops", Role.ADMIN, time.time() - 61)
    stale.run()
    assert not stale.exception, stale.exception
    assert not stale.title
    assert "expired" in stale.warning[0].value
    assert "herd_operator" not in stale.session_state


# -- every operator page checks the role on the server ----------------------------------------
def _page(name: str, role: Role | None) -> AppTest:
    app = AppTest.from_file(str(PAGES / name), default_timeout=30)
    if role is not None:
        log_in_as(app, f"a-{role.value}", role)
    app.run()
    assert not app.exception, (name, role, app.exception)
    return app


def _buttons(app: AppTest) -> set[str]:
    return {b.label for b in app.button}


def test_every_operator_page_checks_the_role(
    dashboard_env: None,
    database: Database,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
) -> None:
    ModelStore(database.engine, models_dir).add(tiny_gguf("tiny.gguf"))
    assert {"deployments.py", "models.py", "monitoring.py"} <= set(OPERATOR_PAGES)
    for name in OPERATOR_PAGES:
        anonymous = _page(name, None)
        assert not anonymous.title, name  # stopped before any of the page ran
        assert "log in" in anonymous.warning[0].value.lower(), name
        assert not _buttons(anonymous), name

        # Viewers read every page but get no control that changes anything; admin pages
        # they do not see at all.
        viewer = _page(name, Role.VIEWER)
        if name in ADMIN_PAGES:
            assert not viewer.title, name
            assert "needs the admin role" in viewer.error[0].value, name
            assert _page(name, Role.ADMIN).title, name
        else:
            assert viewer.title, name
        assert not _buttons(viewer), (name, _buttons(viewer))

    operator = _page("deployments.py", Role.OPERATOR)
    assert "Deploy" in _buttons(operator)
    assert "Rescan the store" in _buttons(_page("models.py", Role.OPERATOR))
    if (PAGES / "routing.py").exists():
        assert "Create key" not in _buttons(_page("routing.py", Role.OPERATOR))
        assert "Create key" in _buttons(_page("routing.py", Role.ADMIN))


# -- API keys never logged or stored ------------------------------------------------------------
@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[ServedAlias]:
    with served_alias(db_url, tmp_path, "m") as target:
        yield target


def test_api_keys_and_authorization_never_logged_or_stored(
    served: ServedAlias, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    key = ApiKeys(served.database.engine).create("client").key
    wait_for(lambda: httpx.get(f"{served.url}/v1/models", timeout=5).status_code == 401)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "user": "u1"}
    ok = httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert ok.status_code == 200, ok.text
    stream = httpx.post(
        f"{served.url}/v1/chat/completions",
        json={**body, "stream": True},
        headers=headers,
        timeout=30,
    )
    assert stream.status_code == 200
    wrong = httpx.post(
        f"{served.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}x"},
        timeout=30,
    )
    assert wrong.status_code == 401
    assert key not in wrong.text
    vote = httpx.post(
        f"{served.url}/v1/feedback",
        json={"response_id": ok.json()["id"], "rating": 1},
        headers=headers,
        timeout=30,
    )
    assert vote.status_code == 200, vote.text

    def written() -> bool:
        with served.database.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM messages")).scalar_one()) >= 2

    wait_for(written)
    dumps = []
    with served.database.engine.connect() as conn:
        for table in ("requests", "messages", "feedback", "api_keys"):
            dumps.append(
                conn.execute(
                    text(f"SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} t")
                ).scalar_one()
            )
    stored = " ".join(dumps)
    assert "hello" in stored  # the dump really holds the rows
    secret_part = key.removeprefix("herd-")
    for needle in (secret_part, "bearer", "authorization"):
        assert needle not in stored.lower(), needle
    assert secret_part not in caplog.text
    assert "bearer" not in caplog.text.lower()
    spooled = [p.read_bytes() for p in (tmp_path / "herd-home").rglob("*") if p.is_file()]
    assert not [s for s in spooled if secret_part.encode() in s]


# -- loopback by default ------------------------------------------------------------------------
def test_gateway_and_dashboard_bind_loopback_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("HERD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HERD_HOME", str(tmp_path))
    settings = Settings()
    assert settings.gateway_host == "127.0.0.1"
    assert settings.dashboard_host == "127.0.0.1"
    assert settings.supervisor_host == "127.0.0.1"
    assert settings.worker_host == "127.0.0.1"
    dashboard = dashboard_service(settings).argv
    assert dashboard[dashboard.index("--server.address") + 1] == "127.0.0.1"
    gateway = gateway_service(settings).argv
    assert gateway[gateway.index("--host") + 1] == "127.0.0.1"
    # Binding elsewhere is explicit.
    monkeypatch.setenv("HERD_GATEWAY_HOST", "0.0.0.0")
    assert gateway_service(Settings()).argv[-3] == "0.0.0.0"
