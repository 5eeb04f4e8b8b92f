"""Operator accounts for the dashboard: argon2-hashed passwords and roles."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.tables import LoginAttempt, Operator


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


class LoginLockedError(Exception):
    """Too many failed logins for this operator name; retry_after_s until it may try again."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class LoggedIn:
    """Who is logged in, and since when (time.time(), for the session's expiry)."""

    name: str
    role: Role
    logged_in_at: float = field(default_factory=time.time)


MIN_PASSWORD_LENGTH = 8

FAILED_LOGIN_SQL = text("""
    INSERT INTO login_attempts AS a (operator_name, failures, locked_until, last_failure_at)
    VALUES (:name, 1,
            CASE WHEN 1 >= :max THEN now() + make_interval(secs => :lockout_s) END, now())
    ON CONFLICT (operator_name) DO UPDATE SET
      failures = CASE WHEN a.locked_until <= now() OR a.last_failure_at < now() - interval '1 hour'
                      THEN 1 ELSE a.failures + 1 END,
      locked_until = CASE
        WHEN (CASE WHEN a.locked_until <= now() OR a.last_failure_at < now() - interval '1 hour'
                   THEN 1 ELSE a.failures + 1 END) >= :max
        THEN now() + make_interval(secs => :lockout_s) END,
      last_failure_at = now()
""")


class Accounts:
    """Operator rows in one database; the only code that touches password hashes."""

    def __init__(self, engine: Engine, max_failures: int = 5, lockout_s: float = 60.0) -> None:
        self.engine = engine
        self.max_failures = max_failures
        self.lockout_s = lockout_s
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
        """The operator when name and password match an enabled account, else None.

        Raises LoginLockedError, without checking the password, while the name is locked
        after max_failures failures in a row."""
        name = name.strip()
        self._check_lock(name)
        with Session(self.engine) as session, session.begin():
            row = session.scalar(select(Operator).where(Operator.name == name))
            ok = False
            if row is None or row.disabled:
                # Hash anyway so a wrong name takes as long as a wrong password.
                self._hasher.hash(password)
            else:
                try:
                    ok = self._hasher.verify(row.password_hash, password)
                except (VerificationError, InvalidHashError):
                    ok = False
            if not ok or row is None:
                session.rollback()
                self._failed(name)
                return None
            row.last_login_at = func.now()
            session.execute(delete(LoginAttempt).where(LoginAttempt.operator_name == name))
            return LoggedIn(name=row.name, role=Role(row.role))

    def _check_lock(self, name: str) -> None:
        with self.engine.connect() as conn:
            left = conn.execute(
                select(func.extract("epoch", LoginAttempt.locked_until - func.now())).where(
                    LoginAttempt.operator_name == name, LoginAttempt.locked_until > func.now()
                )
            ).scalar()
        if left is not None:
            raise LoginLockedError(max(1, int(float(left) + 0.999)))

    def _failed(self, name: str) -> None:
        """Count a failure in the database (every dashboard process sees it); lock the name
        when it reaches max_failures. The count starts afresh after a lockout has run out or
        an hour without failures."""
        with self.engine.begin() as conn:
            conn.execute(
                FAILED_LOGIN_SQL,
                {"name": name, "max": self.max_failures, "lockout_s": self.lockout_s},
            )
