"""app.control: every change is audited in its own transaction; refusals change nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.control.accounts import AccountError, Role
from app.control.audit import Actor, Via, read_audit
from app.control.changes import Admin
from app.control.deployments import DeploymentRequest, ServingSettings, UnknownModelError
from app.control.keys import ApiKeyError, KeyPolicy
from app.db.database import Database
from app.db.tables import AuditLog
from app.store.catalog import ModelStoreError

ALICE = Actor("alice", Via.CLI, "host-a")


@pytest.fixture
def admin(database: Database, settings: Settings, tiny_gguf: Callable[..., Path]) -> Admin:
    admin = Admin(database.engine, settings)
    admin.add_model(ALICE, tiny_gguf("tiny.gguf"))
    return admin


def audit_count(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(AuditLog)).scalar_one())


def test_deployment_changes_are_audited_with_before_and_after(
    admin: Admin, database: Database
) -> None:
    d = admin.create_deployment(
        ALICE, DeploymentRequest("tiny", ServingSettings(model="tiny.gguf", n_ctx=256))
    )
    admin.scale(ALICE, d.id, 3)
    admin.stop(ALICE, d.id)
    admin.start(ALICE, d.id)
    admin.roll(ALICE, d.id, ServingSettings(model="tiny.gguf", n_ctx=512, parallel=2))
    admin.set_traffic_weights(ALICE, "tiny", {d.id: 40})
    admin.delete_deployment(ALICE, d.id)

    rows = list(reversed(read_audit(database.engine)))
    assert [r.action for r in rows] == [
        "model.add",
        "deployment.create",
        "deployment.scale",
        "deployment.stop",
        "deployment.start",
        "deployment.roll",
        "routing.weights",
        "deployment.delete",
    ]
    scale = rows[2]
    assert (scale.actor, scale.via, scale.source) == ("alice", "cli", "host-a")
    assert (scale.target_kind, scale.target_id) == ("deployment", str(d.id))
    assert (scale.before["replicas"], scale.after["replicas"]) == (1, 3)
    assert (rows[5].before["n_ctx"], rows[5].after["n_ctx"]) == (256, 512)
    assert rows[6].before == {str(d.id): 100} and rows[6].after == {str(d.id): 40}
    assert rows[7].after is None and rows[7].before["alias"] == "tiny"


def test_a_refused_change_writes_no_audit_row(admin: Admin, database: Database) -> None:
    before = audit_count(database)
    with pytest.raises(UnknownModelError):
        admin.create_deployment(ALICE, DeploymentRequest("x", ServingSettings(model="nope.gguf")))
    d = admin.create_deployment(
        ALICE, DeploymentRequest("tiny", ServingSettings(model="tiny.gguf", n_ctx=256))
    )
    with pytest.raises(ValueError):
        admin.set_traffic_weights(ALICE, "tiny", {d.id: 0})  # no running deployment left
    assert admin.deployments().get(d.id).traffic_weight == 100
    assert audit_count(database) == before + 1  # only the create


def test_transaction_is_all_or_nothing(admin: Admin, database: Database) -> None:
    before = audit_count(database)
    with pytest.raises(UnknownModelError), admin.transaction(ALICE) as change:
        admin.create_deployment(
            change, DeploymentRequest("a", ServingSettings(model="tiny.gguf", n_ctx=256))
        )
        admin.create_key(change, "k1")
        admin.create_deployment(
            change, DeploymentRequest("b", ServingSettings(model="missing.gguf"))
        )
    assert admin.deployments().all() == []
    assert admin.keys().list() == []
    assert audit_count(database) == before


def test_keys_carry_their_policy_and_never_their_secret(admin: Admin, database: Database) -> None:
    policy = KeyPolicy(scopes=("tiny",), rate_limit_rpm=10, daily_token_quota=1000)
    created = admin.create_key(ALICE, "ci", policy)
    assert admin.keys().active("ci").policy == policy  # type: ignore[union-attr]
    admin.set_key_policy(ALICE, "ci", KeyPolicy(admin=True))
    admin.revoke_key(ALICE, "ci")
    with pytest.raises(ApiKeyError):
        admin.set_key_policy(ALICE, "ci", KeyPolicy())
    with pytest.raises(ApiKeyError):
        KeyPolicy(rate_limit_tpm=0)
    rows = read_audit(database.engine, action="key.")
    assert [r.action for r in rows] == ["key.revoke", "key.update", "key.create"]
    assert rows[1].before["scopes"] == ["tiny"] and rows[1].after["admin"] is True
    with database.engine.connect() as conn:
        dumped = conn.exec_driver_sql("SELECT before::text, after::text FROM audit_log").all()
    assert created.key not in str(dumped)


def test_the_last_admin_stays(admin: Admin, database: Database) -> None:
    admin.add_user(ALICE, "root", "password-1", Role.ADMIN)
    admin.add_user(ALICE, "bob", "password-2", Role.OPERATOR)
    for refused in (
        lambda: admin.set_disabled(ALICE, "root", True),
        lambda: admin.set_role(ALICE, "root", Role.VIEWER),
        lambda: admin.remove_user(ALICE, "root"),
    ):
        with pytest.raises(AccountError, match="last enabled admin"):
            refused()
    admin.set_role(ALICE, "bob", Role.ADMIN)
    admin.set_disabled(ALICE, "root", True)  # bob is an admin now
    with pytest.raises(AccountError, match="last enabled admin"):
        admin.set_role(ALICE, "bob", Role.OPERATOR)
    accounts = admin.accounts()
    assert accounts.current("root") is None
    assert accounts.current("bob") == Role.ADMIN
    admin.reset_password(ALICE, "bob", "a-new-password")
    assert accounts.verify("bob", "a-new-password") is not None
    actions = [r.action for r in read_audit(database.engine, action="user.")]
    assert actions == ["user.password", "user.disable", "user.role", "user.create", "user.create"]
    assert "a-new-password" not in str(read_audit(database.engine))


def test_models_delete_only_unused(admin: Admin, models_dir: Path) -> None:
    d = admin.create_deployment(
        ALICE, DeploymentRequest("tiny", ServingSettings(model="tiny.gguf", n_ctx=256))
    )
    with pytest.raises(ModelStoreError, match="in use"):
        admin.delete_model(ALICE, "tiny.gguf")
    admin.delete_deployment(ALICE, d.id)
    admin.delete_model(ALICE, "tiny.gguf")
    assert not (models_dir / "tiny.gguf").exists()
    assert admin.models().get("tiny.gguf") is None
