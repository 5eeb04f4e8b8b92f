"""The Users and Audit pages (AppTest): admins manage accounts through app.control; a disabled
account's session ends at its next page run; the last admin stays; the audit shows it all."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from app.control.accounts import Accounts, Role
from app.control.audit import read_audit
from app.db.database import Database
from tests.conftest import REPO_ROOT, log_in_as

PAGES = REPO_ROOT / "pages"


def _run(page: str, name: str, role: Role) -> AppTest:
    app = AppTest.from_file(str(PAGES / page), default_timeout=30)
    log_in_as(app, name, role)
    app.run()
    assert not app.exception, app.exception
    return app


@pytest.mark.usefixtures("dashboard_env")
def test_admin_disables_a_user_and_that_session_ends(database: Database) -> None:
    dora = _run("overview.py", "dora", Role.OPERATOR)
    assert dora.title[0].value == "Overview"
    users = _run("users.py", "root", Role.ADMIN)
    assert [r for r in users.dataframe[0].value["name"]] == ["dora", "root"]

    users.selectbox(key="user_pick").set_value("dora").run()
    users.button(key="user_disable").click().run()
    assert not users.exception, users.exception
    assert users.success[0].value == "Disable 'dora': done."

    dora.run()  # dora's next page run
    assert not dora.title
    assert "disabled" in dora.warning[0].value
    assert "herd_operator" not in dora.session_state
    assert Accounts(database.engine).verify("dora", "password-for-tests") is None

    # The last enabled admin cannot disable itself.
    users.selectbox(key="user_pick").set_value("root").run()
    users.button(key="user_disable").click().run()
    assert "last enabled admin" in users.error[0].value
    assert Accounts(database.engine).current("root") == Role.ADMIN

    # A role change applies at the next run too: an admin demoted to viewer loses the page.
    users.selectbox(key="user_pick").set_value("dora").run()
    users.button(key="user_enable").click().run()
    users.selectbox(key="user_pick").set_value("dora").run()
    users.selectbox(key="user_role_dora").set_value("admin").run()
    users.button(key="user_role_save").click().run()
    assert Accounts(database.engine).current("dora") == Role.ADMIN

    rows = read_audit(database.engine, action="user.")
    # The page is the origin; the source is the browser's address (none under AppTest).
    assert [(r.actor, r.via, r.origin, r.source, r.action) for r in rows[:3]] == [
        ("root", "page", "users", None, "user.role"),
        ("root", "page", "users", None, "user.enable"),
        ("root", "page", "users", None, "user.disable"),
    ]

    audit = _run("audit.py", "root", Role.ADMIN)
    shown = audit.dataframe[0].value
    assert list(shown["action"][:3]) == ["user.role", "user.enable", "user.disable"]
    audit.text_input(key="audit_action").input("user.dis").run()
    assert list(audit.dataframe[0].value["action"]) == ["user.disable"]


@pytest.mark.usefixtures("dashboard_env")
def test_users_and_audit_pages_are_for_admins_only() -> None:
    for page in ("users.py", "audit.py"):
        app = _run(page, "op", Role.OPERATOR)
        assert not app.title
        assert "needs the admin role" in app.error[0].value
