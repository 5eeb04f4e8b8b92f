"""The CLI's control-plane commands (`herd apply`, `herd export-config`, `herd models
scan|add`), and what the key and user commands share (open_admin, the actor and key policy
flags): parse, then call app.control."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from app.common.cli_output import echo
from app.common.cli_parser import SubParsers, command
from app.config import Settings
from app.control.apply import Applier, export_config
from app.control.audit import Via, cli_actor
from app.control.changes import Admin
from app.control.config_file import ConfigError, parse_config
from app.control.keys import KeyPolicy
from app.db.database import Database
from app.store import cli as store_cli
from app.store.catalog import ModelStoreError


@contextmanager
def open_admin(settings: Settings) -> Iterator[Admin]:
    """The database, brought up to date, behind an Admin."""
    with Database.open_current(settings) as db:
        yield Admin(db.engine, settings)


def cmd_apply(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    loaded = parse_config(data, "stdin" if args.file == "-" else path.name)
    with open_admin(settings) as admin:
        applier = Applier(admin)
        plan = applier.plan(loaded, prune=args.prune)
        for label in plan.kept:
            echo(f"  {label}: not in the file, kept (--prune removes it)")
        if not plan.steps:
            echo("no changes")
            return 0
        for line in plan.diff():
            echo(line)
        # A dry run makes every change, with every check, in a transaction it rolls back.
        applier.apply(plan, cli_actor(args, Via.APPLY), dry_run=args.dry_run)
        if args.dry_run:
            echo(f"dry run: {len(plan.steps)} change(s) checked, not applied")
            return 0
    echo(f"applied {len(plan.steps)} change(s)")
    for key in plan.created_keys:
        echo(f"new key {key.name!r} (shown once): {key.key}")
    return 0


def cmd_export_config(settings: Settings, args: argparse.Namespace) -> int:
    with open_admin(settings) as admin:
        text = export_config(admin)
    if args.output and args.output != "-":
        Path(args.output).write_text(text, encoding="utf-8")
        echo(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_models_scan(settings: Settings, args: argparse.Namespace) -> int:
    with open_admin(settings) as admin, store_cli.hash_progress() as progress:
        report = admin.scan_models(cli_actor(args), progress)
        store_cli.print_scan(admin.models(), report)
    return 0


def cmd_models_add(settings: Settings, args: argparse.Namespace) -> int:
    if not args.demo and not args.path:
        raise ModelStoreError("give a PATH to a .gguf file, or --demo")
    with open_admin(settings) as admin, store_cli.hash_progress() as progress:
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


def key_policy(args: argparse.Namespace) -> KeyPolicy:
    """The policy the key flags describe."""
    expires = datetime.fromisoformat(args.expires).astimezone() if args.expires else None
    scopes = tuple(s.strip() for s in args.scopes.split(",")) if args.scopes else None
    return KeyPolicy(
        scopes=scopes,
        admin=args.admin,
        expires_at=expires,
        rate_limit_rpm=args.rpm,
        rate_limit_tpm=args.tpm,
        daily_token_quota=args.daily_tokens,
    )


def add_key_policy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scopes", default=None, help="aliases it may call, comma-separated")
    parser.add_argument("--admin", action="store_true", help="may call the admin API")
    parser.add_argument("--expires", default=None, help="ISO time after which it is refused")
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    parser.add_argument("--daily-tokens", type=int, default=None, help="tokens per UTC day")


def add_actor_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--as", dest="actor", default=None, help="who to record in the audit log (default: $USER)"
    )


def register_models(models: SubParsers) -> None:
    """`herd models scan|list|add` (list reads the store alone; scan and add are audited)."""
    command(models, "scan", cmd_models_scan, "read every .gguf in the store into the database")
    store_cli.register(models)
    add = command(models, "add", cmd_models_add, "copy a validated GGUF into the store")
    add.add_argument("path", nargs="?", help="a .gguf file")
    add.add_argument("--name", help="file name in the store (default: the file's own)")
    add.add_argument("--demo", action="store_true", help="add the SmolLM2-135M demo model")


def register(sub: SubParsers) -> None:
    """`herd apply` and `herd export-config`."""
    apply = command(sub, "apply", cmd_apply, "bring deployments, aliases and keys to herd.yaml")
    apply.add_argument("-f", "--file", required=True, help="herd.yaml ('-': standard input)")
    apply.add_argument("--prune", action="store_true", help="remove what the file does not name")
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="show the diff and run every check of a real apply, then change nothing",
    )
    add_actor_flag(apply)
    export = command(sub, "export-config", cmd_export_config, "write the state as herd.yaml")
    export.add_argument("-o", "--output", default=None, help="file (default: standard output)")
