"""`herd apply` and `herd export-config`: diff, all-or-nothing, idempotent, prune, audited;
bad files are refused with their line and change nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.config import Settings
from app.control.apply import Applier, export_config
from app.control.audit import Actor, Via, read_audit
from app.control.changes import Admin
from app.control.config_file import ConfigError, parse_config
from app.db.database import Database
from tests.conftest import run_herd

FIRST = """\
deployments:
  - alias: chat
    model: tiny.gguf
    n_ctx: 256
    parallel: 2
    replicas: 1
    weight: 90
  - alias: chat
    model: other.gguf
    n_ctx: 256
    weight: 10
  - alias: scratch
    model: tiny.gguf
    n_ctx: 128
aliases:
  chat:
    cache_ttl_s: 60
    rate_limit_rpm: 100
keys:
  - name: ci
    scopes: [chat]
    rate_limit_rpm: 30
  - name: ops
    admin: true
"""

# Scale chat/tiny, shift the canary, tighten the ci key, drop `scratch` and the ops key.
SECOND = """\
deployments:
  - alias: chat
    model: tiny.gguf
    n_ctx: 256
    parallel: 2
    replicas: 2
    weight: 50
  - alias: chat
    model: other.gguf
    n_ctx: 256
    weight: 50
aliases:
  chat:
    cache_ttl_s: 60
    rate_limit_rpm: 100
keys:
  - name: ci
    scopes: [chat]
    rate_limit_rpm: 10
    daily_token_quota: 5000
"""


@pytest.fixture
def admin(database: Database, settings: Settings, tiny_gguf: Callable[..., Path]) -> Admin:
    admin = Admin(database.engine, settings)
    setup = Actor("setup", Via.CLI)
    admin.add_model(setup, tiny_gguf("tiny.gguf"))
    admin.add_model(setup, tiny_gguf("other.gguf", tied_output=True))
    return admin


def apply(env: dict[str, str], path: Path, *flags: str) -> str:
    done = run_herd("apply", "-f", str(path), "--as", "ci-bot", *flags, env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_apply_change_apply_again_prune_and_audit(
    admin: Admin, herd_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "herd.yaml"
    path.write_text(FIRST)

    dry = apply(herd_env, path, "--dry-run")
    assert "+ deployment chat: tiny.gguf" in dry and "dry run" in dry
    assert admin.deployments().all() == []

    out = apply(herd_env, path)
    assert "+ deployment scratch: tiny.gguf" in out
    assert "+ key ci" in out and "herd.yaml:20" in out
    assert "new key 'ci' (shown once): herd-" in out
    state = {(d.alias, d.model_name): d for d in admin.deployments().all()}
    assert state[("chat", "tiny.gguf")].traffic_weight == 90
    assert state[("chat", "other.gguf")].traffic_weight == 10
    assert state[("chat", "tiny.gguf")].serving.parallel == 2
    assert admin.alias_settings()["chat"].cache_ttl_s == 60
    ci = admin.keys().active("ci")
    assert ci is not None and ci.policy.scopes == ("chat",) and ci.policy.rate_limit_rpm == 30
    assert admin.keys().active("ops").policy.admin  # type: ignore[union-attr]

    assert apply(herd_env, path).strip() == "no changes"

    path.write_text(SECOND)
    out = apply(herd_env, path)
    assert "replicas 1 -> 2" in out and "weight 90 -> 50" in out
    assert "rate_limit_rpm 30 -> 10" in out
    assert "deployment" in out and "scratch (tiny.gguf): not in the file, kept" in out
    assert {d.alias for d in admin.deployments().all()} == {"chat", "scratch"}

    out = apply(herd_env, path, "--prune")
    assert "- deployment" in out and "scratch" in out and "- key ops (revoked)" in out
    assert {d.alias for d in admin.deployments().all()} == {"chat"}
    assert admin.keys().active("ops") is None
    assert admin.keys().active("ci").id == ci.id  # type: ignore[union-attr]  # same key kept

    assert apply(herd_env, path, "--prune").strip() == "no changes"

    # export-config writes the same state: applying it changes nothing.
    exported = tmp_path / "exported.yaml"
    done = run_herd("export-config", "-o", str(exported), env=herd_env)
    assert done.returncode == 0, done.stderr
    assert apply(herd_env, exported, "--prune").strip() == "no changes"

    rows = read_audit(admin.engine, actor="ci-bot")
    assert {r.via for r in rows} == {"apply"}
    actions = [r.action for r in reversed(rows)]
    assert actions.count("deployment.create") == 3
    assert "deployment.scale" in actions and "routing.weights" in actions
    assert actions[-2:] == ["deployment.delete", "key.revoke"]  # the prune, last
    scale = next(r for r in rows if r.action == "deployment.scale")
    assert (scale.before["replicas"], scale.after["replicas"]) == (1, 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deployments:\n  - alias: a\n    model: tiny.gguf\n    replicaz: 2\n", "herd.yaml:4: "
         "deployments.0.replicaz: unknown key"),
        ("deployments:\n  - alias: a\n    model: tiny.gguf\n    replicas: many\n",
         "herd.yaml:4: deployments.0.replicas: Input should be a valid integer"),
        ("aliases:\n  a:\n    cache_ttl_s: 0\n", "herd.yaml:3: aliases.a.cache_ttl_s"),
        ("keys:\n  - name: k\n    scopes: chat\n", "herd.yaml:3: keys.0.scopes"),
        ("deployments: [\n", "herd.yaml:2: not valid YAML"),
        ("gateways: []\n", "herd.yaml:1: gateways: unknown key"),
    ],
)  # fmt: skip
def test_malformed_files_name_their_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert expected in str(caught.value)


def test_bad_plans_are_refused_with_their_line_and_change_nothing(admin: Admin) -> None:
    applier = Applier(admin)
    missing = parse_config(
        "deployments:\n  - alias: ok\n    model: tiny.gguf\n    n_ctx: 128\n"
        "  - alias: chat\n    model: gone.gguf\n"
    )
    with pytest.raises(ConfigError, match=r"herd.yaml:6: alias chat: no model 'gone.gguf'"):
        applier.plan(missing, prune=False)
    zero = parse_config(
        "deployments:\n  - alias: chat\n    model: tiny.gguf\n    n_ctx: 128\n    weight: 0\n"
    )
    with pytest.raises(ConfigError, match=r"herd.yaml:2: alias chat: the weights .* sum to 0"):
        applier.plan(zero, prune=False)
    # Valid YAML the database refuses at apply time (n_ctx above the trained 512): the
    # deployment before it in the same file is rolled back too.
    late = parse_config(
        "deployments:\n  - alias: first\n    model: tiny.gguf\n    n_ctx: 128\n"
        "  - alias: second\n    model: tiny.gguf\n    n_ctx: 4096\n"
        "keys:\n  - name: k\n"
    )
    plan = applier.plan(late, prune=False)
    with pytest.raises(ConfigError, match=r"herd.yaml:5: .*n_ctx 4096.*nothing was applied"):
        applier.apply(plan, Actor("t", Via.APPLY))
    assert admin.deployments().all() == []
    assert admin.keys().list() == []
    assert plan.created_keys == []
    assert read_audit(admin.engine, actor="t") == []
    assert "deployments: []" in export_config(admin)


def test_cli_reports_a_bad_file_and_exits_1(
    admin: Admin, herd_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "herd.yaml"
    path.write_text("deployments:\n  - alias: a\n    model: tiny.gguf\n    weight: -1\n")
    done = run_herd("apply", "-f", str(path), env=herd_env)
    assert done.returncode == 1
    assert "herd.yaml:4: deployments.0.weight" in done.stderr
