"""The CLI's changes go through app.control: key policies, accounts, each an audit row."""

from __future__ import annotations

from app.control.accounts import Accounts, Role
from app.control.audit import read_audit
from app.control.keys import ApiKeys
from app.db.database import Database
from tests.conftest import run_herd


def herd(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = run_herd(*args, env=env, stdin=stdin)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_keys_and_users_from_the_cli_are_audited(
    herd_env: dict[str, str], database: Database
) -> None:
    out = herd(herd_env, "keys", "create", "ci", "--scopes", "chat,docs", "--rpm", "5",
               "--daily-tokens", "1000", "--as", "carol")  # fmt: skip
    assert "herd-" in out
    herd(herd_env, "keys", "set", "ci", "--tpm", "300", "--admin", "--as", "carol")
    key = ApiKeys(database.engine).active("ci")
    assert key is not None
    assert (key.policy.scopes, key.policy.admin, key.policy.rate_limit_rpm) == (None, True, None)
    assert key.policy.rate_limit_tpm == 300

    herd(herd_env, "users", "add", "root", "--role", "admin", "--password-stdin",
         stdin="root password\n")  # fmt: skip
    herd(herd_env, "users", "add", "ed", "--password-stdin", "--as", "carol",
         stdin="ed password!\n")  # fmt: skip
    herd(herd_env, "users", "role", "ed", "viewer", "--as", "carol")
    herd(herd_env, "users", "disable", "ed", "--as", "carol")
    refused = run_herd("users", "disable", "root", env=herd_env)
    assert refused.returncode == 1 and "last enabled admin" in refused.stderr
    listing = herd(herd_env, "users", "list")
    assert "ed" in listing and "disabled" in listing
    assert Accounts(database.engine).current("ed") is None
    assert Accounts(database.engine).current("root") == Role.ADMIN

    rows = read_audit(database.engine, actor="carol")
    assert [r.action for r in reversed(rows)] == [
        "key.create", "key.update", "user.create", "user.role", "user.disable",
    ]  # fmt: skip
    assert {r.via for r in rows} == {"cli"} and all(r.source for r in rows)
    # The command each change was typed as is its origin.
    assert [r.origin for r in reversed(rows)] == [
        "herd keys create", "herd keys set", "herd users add", "herd users role",
        "herd users disable",
    ]  # fmt: skip
    assert rows[-1].after["scopes"] == ["chat", "docs"]
