"""The CLI's admin commands (`herd apply`, `herd export-config`, `herd users ...`, key
policy flags): parse, then call app.control; app/cli.py hooks them in."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from app.common.cli_output import echo
from app.config import Settings
from app.control import snapshots
from app.control.accounts import Role
from app.control.apply import Applier, export_config
from app.control.audit import Via, cli_actor
from app.control.changes import Admin
from app.control.config_file import ConfigError, parse_config
from app.control.keys import KeyPolicy
from app.db.database import Database

Command = Callable[[Any, str, Callable[[Settings, argparse.Namespace], int], str], Any]


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


def cmd_users_list(settings: Settings, args: argparse.Namespace) -> int:
    with open_admin(settings) as admin:
        users = admin.accounts().list()
    echo(f"{'NAME':24} {'ROLE':9} {'STATE':9} LAST LOGIN")
    for u in users:
        last = u.last_login_at.strftime("%Y-%m-%d %H:%M:%S") if u.last_login_at else "-"
        echo(
            f"{u.name[:24]:24} {u.role.value:9} {'disabled' if u.disabled else 'enabled':9} {last}"
        )
    return 0


def cmd_users_disable(settings: Settings, args: argparse.Namespace) -> int:
    with open_admin(settings) as admin:
        admin.set_disabled(cli_actor(args), args.name, not args.enable)
    echo(f"{'enabled' if args.enable else 'disabled'} {args.name!r}")
    return 0


def cmd_users_role(settings: Settings, args: argparse.Namespace) -> int:
    with open_admin(settings) as admin:
        admin.set_role(cli_actor(args), args.name, Role(args.role))
    echo(f"{args.name!r} is now {args.role}")
    return 0


def cmd_users_remove(settings: Settings, args: argparse.Namespace) -> int:
    with open_admin(settings) as admin:
        admin.remove_user(cli_actor(args), args.name)
    echo(f"removed {args.name!r}")
    return 0


def cmd_keys_set(settings: Settings, args: argparse.Namespace) -> int:
    """Replace an active key's scopes, expiry and limits (flags not given: none)."""
    with open_admin(settings) as admin:
        view = admin.set_key_policy(cli_actor(args), args.name_or_id, key_policy(args))
    echo(f"key {view.id} {view.name!r}: {snapshots.policy_json(view.policy)}")
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


def add_key_commands(keys: Any, command: Command) -> None:
    """`herd keys set`: a key's policy without herd.yaml."""
    set_key = command(keys, "set", cmd_keys_set, "replace a key's scopes, expiry and limits")
    set_key.add_argument("name_or_id")
    add_key_policy_flags(set_key)
    add_actor_flag(set_key)


def add_admin_commands(sub: Any, users: Any, command: Command) -> None:
    """`herd apply`, `herd export-config` and the user commands beyond `users add`."""
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

    command(users, "list", cmd_users_list, "list operator accounts")
    disable = command(users, "disable", cmd_users_disable, "disable (or --enable) an account")
    disable.add_argument("name")
    disable.add_argument("--enable", action="store_true", help="enable it again")
    role = command(users, "role", cmd_users_role, "change an account's role")
    role.add_argument("name")
    role.add_argument("role", choices=[r.value for r in Role])
    remove = command(users, "remove", cmd_users_remove, "delete an account")
    remove.add_argument("name")
    for parser in (disable, role, remove):
        add_actor_flag(parser)
