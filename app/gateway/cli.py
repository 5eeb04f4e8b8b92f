"""`herd retention run`: the request log's text (which the gateway writes) older than N days
is deleted now. (`herd gateway` is in app/cli.py: it mounts the admin API beside the
gateway's routes, which the gateway package does not choose.)"""

from __future__ import annotations

import argparse

from app.common.cli_output import echo, warn
from app.common.cli_parser import SubParsers, command, group
from app.config import Settings
from app.db.database import Database


def cmd_retention_run(settings: Settings, args: argparse.Namespace) -> int:
    from app.gateway.request_log import delete_expired_text

    days = args.days if args.days is not None else settings.text_retention_days
    if days is None or days <= 0:
        warn("herd retention: give --days N or set HERD_TEXT_RETENTION_DAYS")
        return 2
    with Database.open_current(settings) as db:
        deleted = delete_expired_text(db.engine, days)
    echo(f"deleted the text of {deleted} requests older than {days:g} days (metrics kept)")
    return 0


def register(sub: SubParsers) -> None:
    """`herd retention run`."""
    retention = group(sub, "retention", "text retention")
    run = command(
        retention, "run", cmd_retention_run, "delete prompt/response text older than N days now"
    )
    run.add_argument("--days", type=float, default=None, help="default HERD_TEXT_RETENTION_DAYS")
