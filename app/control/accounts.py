"""Operator accounts for the dashboard: argon2-hashed passwords and roles."""

from __future__ import annotations

import builtins
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.common.bounds import Bound
from app.control import audit
from app.control.audit import Actor
from app.db.bind import Bind, begin, connect
from app.db.tables import LoginAttempt, Operator
from app.openai_api.text import bad_text_at


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


@dataclass(frozen=True)
class OperatorView:
    """An account as admins see it (never its password hash)."""

    name: str
    role: Role
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None


def _view(row: Operator) -> OperatorView:
    return OperatorView(
        name=row.name,
        role=Role(row.role),
        disabled=row.disabled,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
    )


MIN_PASSWORD_LENGTH = 8
NAME_LENGTH = Bound(1, 64)
PASSWORD_LENGTH = Bound(MIN_PASSWORD_LENGTH, 1024)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
    problem = PASSWORD_LENGTH.length_problem("a password", password) or bad_text_at(
        password, "the password"
    )
    if problem is not None:
        raise AccountError(problem)


def _storable(name: str) -> bool:
    """Whether name could be an account's (a NUL or a lone surrogate never is, and would
    make PostgreSQL refuse the query)."""
    return bad_text_at(name) is None


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

    def __init__(self, engine: Bind, max_failures: int = 5, lockout_s: float = 60.0) -> None:
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
        if NAME_LENGTH.length_problem("name", name) or not name.isprintable():
            raise AccountError(
                f"operator names are {NAME_LENGTH.low}-{NAME_LENGTH.high} printable characters"
            )
        _check_password(password)
        row = Operator(name=name, password_hash=self._hasher.hash(password), role=Role(role).value)
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
        except IntegrityError as exc:
            raise AccountError(f"an operator called {name!r} already exists") from exc

    def list(self) -> builtins.list[OperatorView]:
        """Every account, by name."""
        with Session(self.engine) as session:
            rows = session.scalars(select(Operator).order_by(Operator.name)).all()
            return [_view(r) for r in rows]

    def get(self, name: str) -> OperatorView:
        if not _storable(name):
            raise AccountError(f"no operator called {name!r}")
        with Session(self.engine) as session:
            row = session.scalar(select(Operator).where(Operator.name == name))
            if row is None:
                raise AccountError(f"no operator called {name!r}")
            return _view(row)

    def current(self, name: str) -> Role | None:
        """The role of an enabled account, None when it is disabled or gone: checked on every
        page run so that disabling or demoting an account takes effect at once."""
        with connect(self.engine) as conn:
            role = conn.execute(
                select(Operator.role).where(Operator.name == name, Operator.disabled.is_(False))
            ).scalar()
        return None if role is None else Role(role)

    def set_role(self, name: str, role: Role) -> OperatorView:
        """Change an account's role; the last enabled admin keeps its role."""
        role = Role(role)
        with Session(self.engine) as session, session.begin():
            row = self._locked(session, name)
            if row.role == Role.ADMIN and role != Role.ADMIN and not row.disabled:
                self._keep_an_admin(session, name, "demote")
            row.role = role.value
            return _view(row)

    def set_disabled(self, name: str, disabled: bool) -> OperatorView:
        """Disable (or enable again) an account; the last enabled admin cannot be disabled."""
        with Session(self.engine) as session, session.begin():
            row = self._locked(session, name)
            if disabled and row.role == Role.ADMIN and not row.disabled:
                self._keep_an_admin(session, name, "disable")
            row.disabled = disabled
            return _view(row)

    def remove(self, name: str) -> OperatorView:
        """Delete an account; the last enabled admin cannot be removed."""
        with Session(self.engine) as session, session.begin():
            row = self._locked(session, name)
            if row.role == Role.ADMIN and not row.disabled:
                self._keep_an_admin(session, name, "remove")
            view = _view(row)
            session.delete(row)
            return view

    def set_password(self, name: str, password: str) -> OperatorView:
        """Give an account a new password (an admin's reset, or the owner's change)."""
        _check_password(password)
        with Session(self.engine) as session, session.begin():
            row = self._locked(session, name)
            row.password_hash = self._hasher.hash(password)
            session.execute(delete(LoginAttempt).where(LoginAttempt.operator_name == name))
            return _view(row)

    @staticmethod
    def _locked(session: Session, name: str) -> Operator:
        if not _storable(name):
            raise AccountError(f"no operator called {name!r}")
        row = session.scalar(select(Operator).where(Operator.name == name).with_for_update())
        if row is None:
            raise AccountError(f"no operator called {name!r}")
        return row

    @staticmethod
    def _keep_an_admin(session: Session, name: str, verb: str) -> None:
        # Locks every enabled admin row, so two admins cannot demote each other at once.
        others = session.execute(
            select(Operator.id)
            .where(
                Operator.role == Role.ADMIN.value,
                Operator.disabled.is_(False),
                Operator.name != name,
            )
            .with_for_update()
        ).all()
        if not others:
            raise AccountError(f"cannot {verb} {name!r}: it is the last enabled admin")

    def ensure_admin(self, actor: Actor) -> str | None:
        """On first run (no operators) create `admin` with a random password and return it;
        its "user.create" audit row (by actor: `herd up`) in the same transaction."""
        if self.count():
            return None
        password = secrets.token_urlsafe(12)
        try:
            with begin(self.engine) as conn:
                accounts = Accounts(conn)
                accounts.add("admin", password, Role.ADMIN)
                view = accounts.get("admin")
                after = {"name": view.name, "role": view.role.value, "disabled": view.disabled}
                audit.record(conn, actor, "user.create", "user", view.name, None, after)
        except AccountError:
            return None  # another herd process created it first
        return password

    def verify(self, name: str, password: str) -> LoggedIn | None:
        """The operator when name and password match an enabled account, else None.

        Raises LoginLockedError, without checking the password, while the name is locked
        after max_failures failures in a row."""
        name = name.strip()
        if not (_storable(name) and _storable(password)):
            # No account has such a name or password; nothing to count it against.
            self._hasher.hash("not a password")
            return None
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
        with connect(self.engine) as conn:
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
        with begin(self.engine) as conn:
            conn.execute(
                FAILED_LOGIN_SQL,
                {"name": name, "max": self.max_failures, "lockout_s": self.lockout_s},
            )
