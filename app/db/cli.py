"""`herd db ...`: the schema, and the embedded PostgreSQL's URL and shutdown."""

from __future__ import annotations

import argparse

from app.common.cli_output import echo, warn
from app.common.cli_parser import SubParsers, command, group
from app.config import Settings
from app.db import migrate
from app.db.database import Database
from app.db.embedded import EmbeddedPostgres, other_holders, running_url, stop_server


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open(settings) as db:
        migrate.upgrade(db.url, args.revision)
        echo(f"schema at revision {migrate.current_revision(db.engine)}")
    return 0


def cmd_db_url(settings: Settings, args: argparse.Namespace) -> int:
    if settings.database_url:
        echo(settings.database_url)
        return 0
    url = running_url(settings.pgdata_dir)
    if url is None:
        # Leave it running: the URL is printed to be used by psql or a notebook next.
        url = EmbeddedPostgres(settings.pgdata_dir).start(keep_running=True)
        warn("started the embedded PostgreSQL; `herd db stop` stops it")
    echo(url)
    return 0


def cmd_db_stop(settings: Settings, args: argparse.Namespace) -> int:
    if settings.database_url:
        warn("HERD_DATABASE_URL is set: Herd does not manage that server")
        return 1
    holders = [] if args.force else other_holders(settings.pgdata_dir)
    if holders:
        warn(
            f"herd: the embedded PostgreSQL is in use by {', '.join(holders)}; stop them "
            "first (Ctrl-C on herd up), or stop it anyway with `herd db stop --force`"
        )
        return 1
    echo(
        "stopped" if stop_server(settings.pgdata_dir) else "the embedded PostgreSQL is not running"
    )
    return 0


def register(sub: SubParsers) -> None:
    """`herd db upgrade|url|stop`."""
    db = group(sub, "db", "the database")
    upgrade = command(db, "upgrade", cmd_db_upgrade, "bring the schema up to date (Alembic)")
    upgrade.add_argument("revision", nargs="?", default="head", help="target (default head)")
    command(db, "url", cmd_db_url, "print a URL that psql and SQLAlchemy accept")
    db_stop = command(db, "stop", cmd_db_stop, "stop the embedded PostgreSQL")
    db_stop.add_argument(
        "--force", action="store_true", help="stop it even while herd processes use it"
    )
