"""`herd supervisor`: run this machine's worker processes for the deployments."""

from __future__ import annotations

import argparse

from app.common.cli_output import warn
from app.common.cli_parser import SubParsers, command
from app.config import Settings
from app.db.database import Database


def cmd_supervisor(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here: the supervisor's modules are not needed by the parser.
    from app.supervisor.errors import SupervisorError
    from app.supervisor.run import run_supervisor

    overrides = {
        "supervisor_port": args.port,
        "node_name": args.node_name,
        "node_labels": args.node_labels,
    }
    try:
        # Validated like the environment: a bad label is one clear line, not a traceback.
        settings = Settings.model_validate(
            {**settings.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    except ValueError as exc:
        warn(f"herd supervisor: {exc}")
        return 2
    with Database.open_current(settings) as db:
        try:
            return run_supervisor(settings, db, keep_workers=args.keep_workers)
        except SupervisorError as exc:
            warn(f"herd: {exc}")
            return 1


def register(sub: SubParsers) -> None:
    """`herd supervisor`."""
    sup = command(
        sub, "supervisor", cmd_supervisor, "run this machine's worker processes for the deployments"
    )
    sup.add_argument("--port", type=int, default=None, help="/health port (HERD_SUPERVISOR_PORT)")
    sup.add_argument(
        "--keep-workers",
        action="store_true",
        help="on exit leave the workers running; the next supervisor adopts them",
    )
    sup.add_argument(
        "--node-name", default=None, help="this node's name (HERD_NODE_NAME; default: host name)"
    )
    sup.add_argument(
        "--node-labels",
        default=None,
        help="this node's labels, k=v,k2=v2, e.g. gpu=h100 (HERD_NODE_LABELS)",
    )
