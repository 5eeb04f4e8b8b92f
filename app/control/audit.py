"""The audit log: who changed what, how (`via`), through which page or command (`origin`),
from where (`source`), with the target before and after.

One vocabulary for every row: `via` says the way in (page, cli, api, apply, or system for
Herd's own actions), `origin` the page ("models", "evaluation"), the command ("herd deploy",
"herd dataset build") or the API route ("POST /v1/batches") the change came from, `source`
the client's address or the host name. It sits at the bottom of the imports (app/db alone),
so jobs, batches and datasets record their changes here without importing upwards.
"""

from __future__ import annotations

import argparse
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
    """Who makes a change: an operator name (or "key:<name>" for an API key), the way it
    came in, from where (client address or host name), and the page, command or API route
    it came from."""

    who: str
    via: Via
    source: str | None = None
    origin: str | None = None

    @classmethod
    def local(cls, who: str | None, via: Via = Via.CLI, origin: str | None = None) -> Actor:
        """A change typed on this machine (CLI, apply): the user name is what the shell
        says unless given, the source is the host name."""
        import getpass

        name = who or getpass.getuser()
        return cls(who=name, via=via, source=socket.gethostname(), origin=origin)


def cli_actor(args: argparse.Namespace, via: Via = Via.CLI) -> Actor:
    """The actor of a `herd` command: --as / --by or the OS user, this host, and the
    command itself ("herd eval"; app/cli.py puts it in args.origin)."""
    who = getattr(args, "actor", None) or getattr(args, "by", None)
    return Actor.local(who, via, getattr(args, "origin", None))


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
            origin=actor.origin,
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
    origin: str | None
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
    via: str | None = None,
    origin: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 500,
) -> list[AuditEntry]:
    """Audit rows, newest first, filtered by actor, action (prefix: "deployment." matches
    every deployment change), via, origin and period."""
    query = select(AuditLog).order_by(AuditLog.at.desc(), AuditLog.id.desc()).limit(limit)
    if actor:
        query = query.where(AuditLog.actor == actor)
    if via:
        query = query.where(AuditLog.via == via)
    if origin:
        query = query.where(AuditLog.origin == origin)
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


def audit_origins(engine: Engine) -> list[str]:
    """Every page, command and route that appears in the audit log (for a filter)."""
    query = select(AuditLog.origin).where(AuditLog.origin.is_not(None)).distinct()
    with engine.connect() as conn:
        return [o for o in conn.execute(query.order_by(AuditLog.origin)).scalars() if o]
