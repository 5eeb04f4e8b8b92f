"""Operator accounts: hashing, roles, first-run admin, wrong passwords."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.control.accounts import AccountError, Accounts, Role
from app.control.audit import Actor, Via
from app.db.database import Database
from app.db.tables import Operator


def test_add_and_verify(database: Database) -> None:
    accounts = Accounts(database.engine)
    accounts.add("alice", "correct horse battery", Role.OPERATOR)
    who = accounts.verify("alice", "correct horse battery")
    assert who is not None and who.name == "alice" and who.role is Role.OPERATOR
    assert accounts.verify("alice", "wrong password") is None
    assert accounts.verify("nobody", "correct horse battery") is None
    with Session(database.engine) as session:
        row = session.scalars(select(Operator)).one()
    assert row.password_hash.startswith("$argon2")
    assert "correct horse" not in row.password_hash
    assert row.last_login_at is not None


def test_refusals(database: Database) -> None:
    accounts = Accounts(database.engine)
    accounts.add("bob", "long enough")
    with pytest.raises(AccountError, match="already exists"):
        accounts.add("bob", "another password")
    with pytest.raises(AccountError, match="at least 8"):
        accounts.add("carol", "short")
    with pytest.raises(AccountError, match="printable"):
        accounts.add("", "long enough")


def test_first_run_admin_once(database: Database) -> None:
    accounts = Accounts(database.engine)
    up = Actor("ops", Via.CLI, "host-a", "herd up")
    password = accounts.ensure_admin(up)
    assert password is not None
    assert accounts.verify("admin", password) is not None
    assert accounts.verify("admin", password).role is Role.ADMIN  # type: ignore[union-attr]
    assert accounts.ensure_admin(up) is None


def test_roles_order() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR)
    assert Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR)
    assert not Role.OPERATOR.allows(Role.ADMIN)
