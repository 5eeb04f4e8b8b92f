"""The audit log: who changed what, how, from where, with the target before and after."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from app.db.tables import AuditLog


class Via(StrEnum):
    """The way a change came in."""

    PAGE = "page"
    CLI = "cli"
    API = "api"
    APPLY = "apply"
    # Herd itself: the supervisor's canary guard rolling a canary back (0015).
    SYSTEM = "system"


@dataclass(frozen=True)
class Actor:
    """Who makes a change: an operator name (or "key:<name>" for the admin API), the way it
    came in, and from where (client address, host name or page)."""

    who: str
    via: Via
    source: str | None = None

    @classmethod
    def local(cls, who: str | None, via: Via = Via.CLI) -> Actor:
        """A change typed on this machine (CLI, apply): the user name is what the shell
        says unless given, the source is the host name."""
        import getpass

        name = who or getpass.getuser()
        return cls(who=name, via=via, source=socket.gethostname())


def record(
    conn: Connection,
    actor: Actor,
    action: str,
    target_kind: str,
    target_id: object,
    before: Any,
    after: Any,
) -> None:
    """Write one audit row on conn, so it commits or rolls back with the change itself."""
    conn.execute(
        insert(AuditLog).values(
            actor=actor.who,
            via=actor.via.value,
            source=actor.source,
            action=action,
            target_kind=target_kind,
            target_id=None if target_id is None else str(target_id),
            before=before,
            after=after,
        )
    )


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    via: str
    source: str | None
    action: str
    target_kind: str
    target_id: str | None
    before: Any
    after: Any


def read_audit(
    engine: Engine,
    *,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 500,
) -> list[AuditEntry]:
    """Audit rows, newest first, filtered by actor, action (prefix: "deployment." matches
    every deployment change) and period."""
    query = select(AuditLog).order_by(AuditLog.at.desc(), AuditLog.id.desc()).limit(limit)
    if actor:
        query = query.where(AuditLog.actor == actor)
    if action:
        query = query.where(AuditLog.action.startswith(action, autoescape=True))
    if since is not None:
        query = query.where(AuditLog.at >= since)
    if until is not None:
        query = query.where(AuditLog.at < until)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [AuditEntry(**dict(r)) for r in rows]


def audit_actors(engine: Engine) -> list[str]:
    """Everyone who appears in the audit log (for a filter)."""
    with engine.connect() as conn:
        return list(
            conn.execute(select(AuditLog.actor).distinct().order_by(AuditLog.actor)).scalars()
        )
