"""Admin: every configuration change, validated by the module that owns its table and
recorded in audit_log in the same transaction. Pages, the CLI, the admin API and
`herd apply` call these methods; nothing changes configuration another way."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine

from app.config import Settings
from app.control.accounts import Accounts, OperatorView, Role
from app.control.aliases import AliasSettings, AliasStore
from app.control.audit import Actor, record
from app.control.deployments import (
    DEFAULT_TRAFFIC_WEIGHT,
    DeploymentRequest,
    Deployments,
    DeploymentView,
    ServingSettings,
)
from app.control.keys import ApiKeyError, ApiKeys, ApiKeyView, CreatedKey, KeyPolicy
from app.control.snapshots import alias_json, deployment_json, key_json, operator_json
from app.control.specs import DeploymentSpec
from app.store.catalog import ModelStore, ProgressCallback, ScanReport
from app.store.demo import add_demo_model


@dataclass(frozen=True)
class Change:
    """One audited change within a transaction (what `Admin.transaction` hands out)."""

    conn: Connection
    actor: Actor

    def record(self, action: str, kind: str, target_id: object, before: Any, after: Any) -> None:
        record(self.conn, self.actor, action, kind, target_id, before, after)


Args = ParamSpec("Args")
Result = TypeVar("Result")


def in_transaction(
    change: Callable[Concatenate[Admin, Change, Args], Result],
) -> Callable[Concatenate[Admin, Actor | Change, Args], Result]:
    """Write an audited change once, callable two ways: with an Actor it runs in a
    transaction of its own (change and audit row commit together); with a Change it joins
    that transaction (herd apply and the admin API make several changes as one)."""

    @functools.wraps(change)
    def run(admin: Admin, by: Actor | Change, /, *args: Args.args, **kwargs: Args.kwargs) -> Result:
        if isinstance(by, Change):
            return change(admin, by, *args, **kwargs)
        with admin.transaction(by) as joined:
            return change(admin, joined, *args, **kwargs)

    return run


class Admin:
    """The changes operators make, each audited: pass one Actor per call, or the Change of
    a transaction already open (Admin.transaction) to make several changes as one."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    @contextmanager
    def transaction(self, actor: Actor, *, rollback: bool = False) -> Iterator[Change]:
        """One transaction for several changes (herd apply): all of them, or none. With
        rollback, every change is made and checked, then undone (herd apply --dry-run)."""
        if not rollback:
            with self.engine.begin() as conn:
                yield Change(conn, actor)
            return
        with self.engine.connect() as conn:
            trial = conn.begin()
            try:
                yield Change(conn, actor)
            finally:
                trial.rollback()

    # ---- models ----------------------------------------------------------------------------

    def models(self) -> ModelStore:
        return ModelStore(self.engine, self.settings.models_path)

    @in_transaction
    def add_model(
        self,
        change: Change,
        source: Path | None,
        name: str | None = None,
        *,
        demo: bool = False,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Copy a GGUF (or the demo model) into the store; its name there."""
        store = ModelStore(change.conn, self.settings.models_path)
        if demo:
            model = add_demo_model(store, progress)
        else:
            assert source is not None
            model = store.add(source, name, progress)
        after = {"name": model.name, "sha256": model.sha256, "status": model.status}
        change.record("model.add", "model", model.name, None, after)
        return model.name

    def scan_models(self, actor: Actor, progress: ProgressCallback | None = None) -> ScanReport:
        """Rescan the store. The scan writes as it reads files; the audit row follows it."""
        report = self.models().scan(progress)
        with self.transaction(actor) as change:
            after = {
                "valid": len(report.valid),
                "invalid": sorted(report.invalid),
                "missing": report.missing,
            }
            change.record("model.scan", "model", None, None, after)
        return report

    @in_transaction
    def delete_model(self, change: Change, name: str) -> None:
        """Delete a model no deployment uses, row and file."""
        row = ModelStore(change.conn, self.settings.models_path).delete(name)
        before = {"name": row.name, "sha256": row.sha256, "status": row.status}
        change.record("model.delete", "model", name, before, None)

    # ---- deployments -----------------------------------------------------------------------

    def deployments(self) -> Deployments:
        return Deployments(self.engine)

    @in_transaction
    def create_deployment(self, change: Change, request: DeploymentRequest) -> DeploymentView:
        deployments = Deployments(change.conn)
        # Created at the default weight and then given its own: set_traffic_weights refuses a
        # weight that would leave the alias no running deployment to call.
        view = deployments.create(replace(request, traffic_weight=DEFAULT_TRAFFIC_WEIGHT))
        if request.traffic_weight != view.traffic_weight:
            deployments.set_traffic_weights(view.alias, {view.id: request.traffic_weight})
            view = deployments.get(view.id)
        change.record("deployment.create", "deployment", view.id, None, deployment_json(view))
        return view

    @in_transaction
    def deploy_spec(self, change: Change, spec: DeploymentSpec) -> DeploymentView:
        """A deployment as the admin API and herd.yaml describe it, stopped if it says so."""
        view = self.create_deployment(change, spec.request())
        return self.stop(change, view.id) if spec.stopped else view

    @in_transaction
    def scale(self, change: Change, deployment_id: int, replicas: int) -> DeploymentView:
        return self._deployment_change(
            change, "deployment.scale", deployment_id, lambda d: d.scale(deployment_id, replicas)
        )

    @in_transaction
    def stop(self, change: Change, deployment_id: int) -> DeploymentView:
        return self._deployment_change(
            change, "deployment.stop", deployment_id, lambda d: d.stop(deployment_id)
        )

    @in_transaction
    def start(self, change: Change, deployment_id: int) -> DeploymentView:
        return self._deployment_change(
            change, "deployment.start", deployment_id, lambda d: d.start(deployment_id)
        )

    @in_transaction
    def roll(
        self,
        change: Change,
        deployment_id: int,
        serving: ServingSettings,
        *,
        allow_ctx_overflow: bool = False,
    ) -> DeploymentView:
        return self._deployment_change(
            change,
            "deployment.roll",
            deployment_id,
            lambda d: d.roll(deployment_id, serving, allow_ctx_overflow=allow_ctx_overflow),
        )

    @in_transaction
    def delete_deployment(self, change: Change, deployment_id: int) -> None:
        deployments = Deployments(change.conn)
        before = deployment_json(deployments.get(deployment_id))
        deployments.delete(deployment_id)
        change.record("deployment.delete", "deployment", deployment_id, before, None)

    def _deployment_change(
        self, change: Change, action: str, deployment_id: int, run: Any
    ) -> DeploymentView:
        deployments = Deployments(change.conn)
        before = deployment_json(deployments.get(deployment_id))
        after: DeploymentView = run(deployments)
        change.record(action, "deployment", deployment_id, before, deployment_json(after))
        return after

    @in_transaction
    def set_traffic_weights(self, change: Change, alias: str, weights: Mapping[int, int]) -> None:
        deployments = Deployments(change.conn)
        current = {d.id: d.traffic_weight for d in deployments.all() if d.alias == alias}
        deployments.set_traffic_weights(alias, weights)
        after = {**current, **weights}
        change.record(
            "routing.weights",
            "alias",
            alias,
            {str(k): v for k, v in current.items()},
            {str(k): v for k, v in after.items()},
        )

    # ---- alias settings --------------------------------------------------------------------

    @in_transaction
    def set_alias_settings(self, change: Change, alias: str, value: AliasSettings) -> None:
        store = AliasStore(change.conn)
        before = store.all().get(alias)
        store.put(alias, value)
        change.record(
            "alias.settings",
            "alias",
            alias,
            alias_json(before) if before else None,
            alias_json(value),
        )

    @in_transaction
    def reset_alias_settings(self, change: Change, alias: str) -> None:
        """Drop an alias's settings row: it gets the defaults again."""
        store = AliasStore(change.conn)
        before = store.all().get(alias)
        if store.delete(alias):
            change.record(
                "alias.reset", "alias", alias, alias_json(before) if before else None, None
            )

    def alias_settings(self) -> dict[str, AliasSettings]:
        return AliasStore(self.engine).all()

    # ---- API keys --------------------------------------------------------------------------

    def keys(self) -> ApiKeys:
        return ApiKeys(self.engine)

    @in_transaction
    def create_key(self, change: Change, name: str, policy: KeyPolicy | None = None) -> CreatedKey:
        keys = ApiKeys(change.conn)
        created = keys.create(name, created_by=change.actor.who, policy=policy)
        view = _key(keys, created.id)
        change.record("key.create", "key", created.id, None, key_json(view))
        return created

    @in_transaction
    def set_key_policy(self, change: Change, name_or_id: str, policy: KeyPolicy) -> ApiKeyView:
        keys = ApiKeys(change.conn)
        before = _active_key(keys, name_or_id)
        keys.set_policy(before.id, policy)
        after = _key(keys, before.id)
        change.record("key.update", "key", before.id, key_json(before), key_json(after))
        return after

    @in_transaction
    def revoke_key(self, change: Change, name_or_id: str) -> list[int]:
        keys = ApiKeys(change.conn)
        before = {k.id: k for k in keys.list()}
        ids = keys.revoke(name_or_id)
        for key_id in ids:
            change.record(
                "key.revoke",
                "key",
                key_id,
                key_json(before[key_id]),
                key_json(_key(keys, key_id)),
            )
        return ids

    # ---- users -----------------------------------------------------------------------------

    def accounts(self) -> Accounts:
        return Accounts(
            self.engine,
            max_failures=self.settings.login_max_failures,
            lockout_s=self.settings.login_lockout_s,
        )

    @in_transaction
    def add_user(self, change: Change, name: str, password: str, role: Role) -> OperatorView:
        accounts = Accounts(change.conn)
        accounts.add(name, password, role)
        view = accounts.get(name.strip())
        change.record("user.create", "user", view.name, None, operator_json(view))
        return view

    @in_transaction
    def set_role(self, change: Change, name: str, role: Role) -> OperatorView:
        return _user_change(change, "user.role", name, lambda a: a.set_role(name, role))

    @in_transaction
    def set_disabled(self, change: Change, name: str, disabled: bool) -> OperatorView:
        action = "user.disable" if disabled else "user.enable"
        return _user_change(change, action, name, lambda a: a.set_disabled(name, disabled))

    @in_transaction
    def reset_password(self, change: Change, name: str, password: str) -> OperatorView:
        # The audit row says that the password changed, never what to.
        return _user_change(change, "user.password", name, lambda a: a.set_password(name, password))

    @in_transaction
    def remove_user(self, change: Change, name: str) -> None:
        view = Accounts(change.conn).remove(name)
        change.record("user.delete", "user", name, operator_json(view), None)


def _user_change(change: Change, action: str, name: str, run: Any) -> OperatorView:
    accounts = Accounts(change.conn)
    before = operator_json(accounts.get(name))
    after: OperatorView = run(accounts)
    change.record(action, "user", name, before, operator_json(after))
    return after


def _key(keys: ApiKeys, key_id: int) -> ApiKeyView:
    found = next((k for k in keys.list() if k.id == key_id), None)
    if found is None:
        raise ApiKeyError(f"no key with id {key_id}")
    return found


def _active_key(keys: ApiKeys, name_or_id: str) -> ApiKeyView:
    found = next(
        (k for k in keys.list() if k.active and (k.name == name_or_id or str(k.id) == name_or_id)),
        None,
    )
    if found is None:
        raise ApiKeyError(f"no active key named {name_or_id!r} or with that id")
    return found
