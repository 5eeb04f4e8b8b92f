"""`herd dashboard`: the Streamlit dashboard alone."""

from __future__ import annotations

import argparse

from app.common.cli_output import echo
from app.common.cli_parser import SubParsers, command
from app.config import Settings
from app.db.database import Database
from app.processes.launcher import dashboard_service, serve


def cmd_dashboard(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        service = dashboard_service(settings, args.port)
        return serve(
            settings, db, [service], echo, on_ready=lambda: echo(f"dashboard: {service.public_url}")
        )


def register(sub: SubParsers) -> None:
    """`herd dashboard`."""
    dash = command(sub, "dashboard", cmd_dashboard, "run the Streamlit dashboard alone")
    dash.add_argument("--port", type=int, default=None, help="port (default HERD_DASHBOARD_PORT)")
