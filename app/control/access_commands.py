"""`herd keys ...` and `herd users ...`: who may call the gateway and who may open the
dashboard. Parse, then call app.control."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import secrets
import sys

from app.common.cli_output import echo, warn
from app.common.cli_parser import SubParsers, command, group
from app.config import Settings
from app.control import snapshots
from app.control.accounts import AccountError, Role
from app.control.audit import cli_actor
from app.control.commands import add_actor_flag, add_key_policy_flags, key_policy, open_admin
from app.control.keys import ApiKeyError, ApiKeys
from app.db.database import Database


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    with open_admin(settings) as admin:
        try:
            actor = cli_actor(args)
            created = admin.create_key(actor, args.name, key_policy(args))
        except ApiKeyError as exc:
            warn(f"herd: {exc}")
            return 1
    echo(f"created key {created.id} {created.name!r}:")
    echo(created.key)
    warn("shown once: only its hash is stored. Clients send `Authorization: Bearer <key>`.")
    return 0


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
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
    with open_admin(settings) as admin:
        try:
            ids = admin.revoke_key(cli_actor(args), args.name_or_id)
        except ApiKeyError as exc:
            warn(f"herd: {exc}")
            return 1
    echo(f"revoked key {', '.join(str(i) for i in ids)}; gateways refuse it within a second")
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
    return secrets.token_urlsafe(12), True


def cmd_users_add(settings: Settings, args: argparse.Namespace) -> int:
    password, generated = _read_password(args)
    with open_admin(settings) as admin:
        admin.add_user(cli_actor(args), args.name, password, Role(args.role))
    echo(f"created {args.role} {args.name!r}")
    if generated:
        echo(f"password: {password}  (shown once)")
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


def register_keys(sub: SubParsers) -> None:
    """`herd keys create|list|revoke|set`."""
    keys = group(sub, "keys", "gateway API keys")
    create = command(keys, "create", cmd_keys_create, "create a key (shown once)")
    create.add_argument("name")
    create.add_argument(
        "--as", "--created-by", dest="actor", default=None, help="who asked for it (audit log)"
    )
    add_key_policy_flags(create)
    listing = command(keys, "list", cmd_keys_list, "list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = command(keys, "revoke", cmd_keys_revoke, "revoke a key by name or id")
    revoke.add_argument("name_or_id")
    add_actor_flag(revoke)
    set_key = command(keys, "set", cmd_keys_set, "replace a key's scopes, expiry and limits")
    set_key.add_argument("name_or_id")
    add_key_policy_flags(set_key)
    add_actor_flag(set_key)


def register_users(sub: SubParsers) -> None:
    """`herd users add|list|disable|role|remove`."""
    users = group(sub, "users", "dashboard operator accounts")
    add = command(users, "add", cmd_users_add, "create an operator account")
    add.add_argument("name")
    add.add_argument("--role", choices=[r.value for r in Role], default=Role.OPERATOR.value)
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add_actor_flag(add)
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
