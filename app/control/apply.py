"""`herd apply`: bring deployments, alias settings and keys to what herd.yaml says, as one
audited transaction; `herd export-config`: the current state in the same format."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from sqlalchemy.exc import DBAPIError, OperationalError

from app.control.aliases import AliasSettingError
from app.control.audit import Actor
from app.control.changes import Admin, Change
from app.control.config_file import ConfigError, LoadedConfig
from app.control.deployments import DeploymentError, DeploymentView, serving_columns
from app.control.keys import ApiKeyError, ApiKeyView, CreatedKey
from app.control.snapshots import alias_json, policy_json
from app.control.specs import AliasSpec, DeploymentSpec, KeySpec
from app.engine.serving import SERVING_FIELDS

REFUSALS = (DeploymentError, ApiKeyError, AliasSettingError)


@dataclass
class Step:
    """One change of the plan: how it reads in the diff, where in the file it comes from,
    and what it does in the apply transaction."""

    text: str
    where: str
    run: Callable[[Change], object]


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    # Deployments the file does not name, kept without --prune.
    kept: list[str] = field(default_factory=list)
    created_keys: list[CreatedKey] = field(default_factory=list)

    def diff(self) -> list[str]:
        return [f"{s.text}  ({s.where})" if s.where else s.text for s in self.steps]


def _changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {before.get(k)!r} -> {v!r}" for k, v in after.items() if before.get(k) != v
    )


def _deployment_fields(d: DeploymentSpec | DeploymentView) -> dict[str, Any]:
    """What apply compares of a deployment, from the file or from the database."""
    if isinstance(d, DeploymentView):
        return {
            "replicas": d.replicas,
            **serving_columns(d.serving),
            "node": d.node,
            "node_labels": d.node_labels,
            "weight": d.traffic_weight,
            "stopped": d.state == "stopped",
        }
    return {
        "replicas": d.replicas,
        **serving_columns(d.serving()),
        "node": (d.node or "").strip() or None,
        "node_labels": d.node_labels,
        "weight": d.weight,
        "stopped": d.stopped,
    }


class Applier:
    """Plans and applies one herd.yaml against one database."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    def plan(self, loaded: LoadedConfig, prune: bool) -> Plan:
        """The changes that bring the database to the file; raises ConfigError (with lines)
        for what cannot be applied, before anything changes."""
        plan = Plan()
        config = loaded.config
        self._check(loaded)
        self._plan_deployments(loaded, prune, plan)
        current_aliases = self.admin.alias_settings()
        for alias, spec in config.aliases.items():
            where = loaded.where(("aliases", alias))
            before = current_aliases.get(alias)
            after = spec.settings()
            if before == after:
                continue
            text = (
                f"~ alias {alias}: {_changes(alias_json(before), alias_json(after))}"
                if before
                else f"+ alias {alias}: {alias_json(after)}"
            )
            plan.steps.append(Step(text, where, self._set_alias(alias, spec)))
        if prune:
            for alias in sorted(set(current_aliases) - set(config.aliases)):
                plan.steps.append(Step(f"- alias {alias} (settings back to defaults)", "",
                                       self._reset_alias(alias)))  # fmt: skip
        self._plan_keys(loaded, prune, plan)
        return plan

    def _check(self, loaded: LoadedConfig) -> None:
        config = loaded.config
        problems: list[str] = []
        models = {m.name: m for m in self.admin.models().list()}
        seen: set[tuple[str, str]] = set()
        weights: dict[str, int] = defaultdict(int)
        first_line: dict[str, str] = {}
        for i, d in enumerate(config.deployments):
            where = loaded.where(("deployments", i, "model"))
            model = models.get(d.model)
            if model is None:
                problems.append(f"{where}: alias {d.alias}: no model {d.model!r} in the store")
            elif model.status != "valid":
                problems.append(f"{where}: alias {d.alias}: model {d.model} is {model.status}")
            if (d.alias, d.model) in seen:
                problems.append(
                    f"{loaded.where(('deployments', i))}: alias {d.alias} deploys {d.model} "
                    "twice; give it more replicas instead"
                )
            seen.add((d.alias, d.model))
            first_line.setdefault(d.alias, loaded.where(("deployments", i)))
            if not d.stopped:
                weights[d.alias] += d.weight
        for alias, where in first_line.items():
            running = [d for d in config.deployments if d.alias == alias and not d.stopped]
            if running and weights[alias] == 0:
                problems.append(
                    f"{where}: alias {alias}: the weights of its running deployments sum to "
                    "0, so every call to it would fail"
                )
        names = [k.name for k in config.keys]
        for i, k in enumerate(config.keys):
            if names.count(k.name) > 1 and names.index(k.name) != i:
                problems.append(f"{loaded.where(('keys', i))}: key {k.name!r} appears twice")
        if problems:
            raise ConfigError("\n".join(problems))

    def _plan_deployments(self, loaded: LoadedConfig, prune: bool, plan: Plan) -> None:
        existing = sorted(self.admin.deployments().all(), key=lambda d: d.id)
        matched: set[int] = set()
        weight_changes: dict[str, dict[int, int]] = defaultdict(dict)
        for i, spec in enumerate(loaded.config.deployments):
            where = loaded.where(("deployments", i))
            current = next(
                (
                    d
                    for d in existing
                    if d.id not in matched and d.alias == spec.alias and d.model_name == spec.model
                ),
                None,
            )
            want = _deployment_fields(spec)
            if current is None:
                text = (
                    f"+ deployment {spec.alias}: {spec.model}, {spec.replicas} replica(s), "
                    f"n_ctx {want['n_ctx']}, parallel {want['parallel']}, weight {spec.weight}"
                )
                plan.steps.append(Step(text, where, self._create(spec)))
                continue
            matched.add(current.id)
            have = _deployment_fields(current)
            if have == want:
                continue
            label = f"deployment {current.id} {spec.alias} ({spec.model})"
            text = f"~ {label}: {_changes(have, want)}"
            if (have["node"], have["node_labels"]) != (want["node"], want["node_labels"]):
                plan.steps.append(Step(text + " (placement: replaced by a new deployment)",
                                       where, self._replace(current.id, spec)))  # fmt: skip
                continue
            plan.steps.append(Step(text, where, self._update(current, have, spec, want)))
            if have["weight"] != want["weight"]:
                weight_changes[spec.alias][current.id] = spec.weight
        for alias, weights in weight_changes.items():
            plan.steps.append(Step(f"  weights of {alias}: {weights}", "",
                                   self._weights(alias, weights)))  # fmt: skip
        for d in existing:
            if d.id in matched:
                continue
            label = f"deployment {d.id} {d.alias} ({d.model_name})"
            if prune:
                plan.steps.append(Step(f"- {label}", "", self._delete(d.id)))
            else:
                plan.kept.append(label)

    def _plan_keys(self, loaded: LoadedConfig, prune: bool, plan: Plan) -> None:
        active: dict[str, ApiKeyView] = {}
        for k in self.admin.keys().list():
            if k.active:
                active.setdefault(k.name, k)
        for i, spec in enumerate(loaded.config.keys):
            where = loaded.where(("keys", i))
            current = active.get(spec.name)
            want = spec.policy()
            if current is None:
                plan.steps.append(Step(f"+ key {spec.name}: {policy_json(want)}", where,
                                       self._create_key(spec, plan)))  # fmt: skip
            elif current.policy != want:
                text = (
                    f"~ key {spec.name}: {_changes(policy_json(current.policy), policy_json(want))}"
                )
                plan.steps.append(Step(text, where, self._set_key(current.id, spec)))
        if prune:
            named = {k.name for k in loaded.config.keys}
            for name, key in sorted(active.items()):
                if name not in named:
                    plan.steps.append(Step(f"- key {name} (revoked)", "", self._revoke(key.id)))

    # -- the steps' actions (each runs inside the one apply transaction)

    def _create(self, spec: DeploymentSpec) -> Callable[[Change], object]:
        def run(change: Change) -> None:
            self.admin.deploy_spec(change, spec)

        return run

    def _replace(self, old_id: int, spec: DeploymentSpec) -> Callable[[Change], object]:
        create = self._create(spec)

        def run(change: Change) -> None:
            create(change)
            self.admin.delete_deployment(change, old_id)

        return run

    def _update(
        self, current: DeploymentView, have: dict[str, Any], spec: DeploymentSpec,
        want: dict[str, Any],
    ) -> Callable[[Change], object]:  # fmt: skip
        def run(change: Change) -> None:
            if any(have[f] != want[f] for f in SERVING_FIELDS):
                self.admin.roll(
                    change, current.id, spec.serving(), allow_ctx_overflow=spec.allow_ctx_overflow
                )
            if have["replicas"] != want["replicas"]:
                self.admin.scale(change, current.id, spec.replicas)
            if have["stopped"] != want["stopped"]:
                if spec.stopped:
                    self.admin.stop(change, current.id)
                else:
                    self.admin.start(change, current.id)

        return run

    def _weights(self, alias: str, weights: dict[int, int]) -> Callable[[Change], object]:
        return lambda change: self.admin.set_traffic_weights(change, alias, weights)

    def _delete(self, deployment_id: int) -> Callable[[Change], object]:
        return lambda change: self.admin.delete_deployment(change, deployment_id)

    def _set_alias(self, alias: str, spec: AliasSpec) -> Callable[[Change], object]:
        return lambda change: self.admin.set_alias_settings(change, alias, spec.settings())

    def _reset_alias(self, alias: str) -> Callable[[Change], object]:
        return lambda change: self.admin.reset_alias_settings(change, alias)

    def _create_key(self, spec: KeySpec, plan: Plan) -> Callable[[Change], object]:
        def run(change: Change) -> None:
            plan.created_keys.append(self.admin.create_key(change, spec.name, spec.policy()))

        return run

    def _set_key(self, key_id: int, spec: KeySpec) -> Callable[[Change], object]:
        return lambda change: self.admin.set_key_policy(change, str(key_id), spec.policy())

    def _revoke(self, key_id: int) -> Callable[[Change], object]:
        return lambda change: self.admin.revoke_key(change, str(key_id))

    def apply(self, plan: Plan, actor: Actor, *, dry_run: bool = False) -> None:
        """Run every step in one transaction: all of them, or (on any refusal) none. A dry
        run makes the same changes with the same checks, then rolls them back."""
        plan.created_keys.clear()
        try:
            with self.admin.transaction(actor, rollback=dry_run) as change:
                for step in plan.steps:
                    self._run(step, change)
        finally:
            if dry_run:
                plan.created_keys.clear()  # rolled back: no key exists

    @staticmethod
    def _run(step: Step, change: Change) -> None:
        where = f"{step.where}: " if step.where else ""
        try:
            step.run(change)
        except REFUSALS as exc:
            raise ConfigError(f"{where}{exc} (nothing was applied)") from None
        except DBAPIError as exc:
            if isinstance(exc, OperationalError):
                raise
            # A value the checks above let through and PostgreSQL refused: one line, no
            # traceback.
            reason = str(exc.orig or exc).splitlines()[0]
            raise ConfigError(
                f"{where}the database refused this change: {reason} (nothing was applied)"
            ) from None


def export_config(admin: Admin) -> str:
    """The current deployments, alias settings and active keys as herd.yaml."""
    deployments = []
    for d in sorted(admin.deployments().all(), key=lambda d: d.id):
        fields = _deployment_fields(d)
        entry: dict[str, Any] = {"alias": d.alias, "model": d.model_name}
        for name, value in fields.items():
            if value is None or (name in ("node_labels",) and not value):
                continue
            if name == "stopped" and not value:
                continue
            entry[name] = value
        deployments.append(entry)
    aliases = {a: alias_json(s) for a, s in sorted(admin.alias_settings().items())}
    keys = []
    for k in admin.keys().list():
        if not k.active:
            continue
        policy = {n: v for n, v in policy_json(k.policy).items() if v is not None}
        if not policy.get("admin"):
            policy.pop("admin", None)
        keys.append({"name": k.name, **policy})
    document = {"deployments": deployments, "aliases": aliases, "keys": keys}
    header = "# herd.yaml: written by `herd export-config`; apply with `herd apply -f`.\n"
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
