"""Operator accounts for the dashboard: argon2-hashed passwords and roles."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.tables import Operator


class Role(StrEnum):
    """What an operator may do; each role includes the ones below it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class AccountError(ValueError):
    """An account operation was refused; the message says why."""


@dataclass(frozen=True)
class LoggedIn:
    """Who is logged in."""

    name: str
    role: Role


MIN_PASSWORD_LENGTH = 8


class Accounts:
    """Operator rows in one database; the only code that touches password hashes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._hasher = PasswordHasher()

    def count(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(Operator)) or 0)

    def add(self, name: str, password: str, role: Role = Role.OPERATOR) -> None:
        """Create an operator; refuses a taken name or a short password."""
        name = name.strip()
        if not name or len(name) > 64 or not name.isprintable():
            raise AccountError("operator names are 1-64 printable characters")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AccountError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
        row = Operator(name=name, password_hash=self._hasher.hash(password), role=Role(role).value)
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
        except IntegrityError as exc:
            raise AccountError(f"an operator called {name!r} already exists") from exc

    def ensure_admin(self) -> str | None:
        """On first run (no operators) create `admin` with a random password and return it."""
        if self.count():
            return None
        password = secrets.token_urlsafe(12)
        try:
            self.add("admin", password, Role.ADMIN)
        except AccountError:
            return None  # another herd process created it first
        return password

    def verify(self, name: str, password: str) -> LoggedIn | None:
        """The operator when name and password match an enabled account, else None."""
        with Session(self.engine) as session, session.begin():
            row = session.scalar(select(Operator).where(Operator.name == name.strip()))
            if row is None or row.disabled:
                # Hash anyway so a wrong name takes as long as a wrong password.
                self._hasher.hash(password)
                return None
            try:
                self._hasher.verify(row.password_hash, password)
            except (VerificationError, InvalidHashError):
                return None
            row.last_login_at = func.now()
            return LoggedIn(name=row.name, role=Role(row.role))
