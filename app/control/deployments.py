"""Deployments: what operators ask to run (a model under an alias, N replicas), and the
workers that run it. The only code that writes the `deployments` table.

Every change fires the `herd_deployments` NOTIFY (a trigger, see migration 0003), so the
supervisors act on it at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from app.common.bounds import Bound
from app.config import DEFAULT_WORKER_LIVE_S, LABEL_PATTERN, parse_labels
from app.control.replicas import WorkerView, worker_views
from app.db.bind import Bind, begin
from app.db.tables import Deployment, Model
from app.engine.serving import ServingParams, serving_values_from

ALIAS_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")
# What operators send, bounded where it is defined (the admin API and herd.yaml derive
# their fields from these; app/common/bounds.py).
ALIAS_LENGTH = Bound(1, 128)
MODEL_NAME_LENGTH = Bound(1, 255)
REPLICAS = Bound(0, 1000)
TRAFFIC_WEIGHT = Bound(0, 1_000_000, "a share of the alias's calls, relative to the others")
DEFAULT_TRAFFIC_WEIGHT = 100
NODE_LENGTH = Bound(0, 253)
NODE_LABELS = Bound(0, 64)
LABEL_LENGTH = Bound(1, 63)

# state stays 'active' below the limit; at the limit the supervisor gives up.
FAILURE_SQL = text(
    """
    UPDATE deployments
    SET failures = failures + 1,
        error = :reason,
        state = CASE WHEN failures + 1 >= :limit THEN 'failed' ELSE state END
    WHERE id = :id AND state = 'active'
    RETURNING failures, state
    """
)
JOIN_SQL = text(
    "SELECT id FROM deployments WHERE alias = :alias AND model_id = :model_id "
    "AND state <> 'stopped' ORDER BY external, id LIMIT 1"
)
# replicas 0: nobody here decides how many there are; Kubernetes or the operator does.
CREATE_EXTERNAL_SQL = text(
    "INSERT INTO deployments (alias, model_id, replicas, external) "
    "VALUES (:alias, :model_id, 0, true) RETURNING id"
)


class DeploymentError(ValueError):
    """A deployment request was refused; the message says why."""


class UnknownModelError(DeploymentError):
    """The named model is not in the store."""


class InvalidModelError(DeploymentError):
    """The model is in the store but cannot be served (invalid or missing file)."""


class InvalidSettingError(DeploymentError):
    """A setting is out of range."""


class ContextTooLargeError(DeploymentError):
    """n_ctx exceeds the model's trained context and the operator did not confirm it."""


class UnknownDeploymentError(DeploymentError):
    """No deployment has that id."""


@dataclass(frozen=True)
class ServingSettings(ServingParams):
    """How each replica runs: the model (store name) and llama.cpp's settings."""

    model: str


@dataclass(frozen=True)
class DeploymentRequest:
    """What an operator asks to run: `replicas` workers serving serving.model under alias,
    on `node` or on nodes carrying every one of `node_labels` (default: any node). One
    definition for the pages, the CLI, the admin API, herd.yaml and rollouts."""

    alias: str
    serving: ServingSettings
    replicas: int = 1
    node: str | None = None
    node_labels: Mapping[str, str] | None = None
    # n_ctx above the model's trained context, confirmed by the operator.
    allow_ctx_overflow: bool = False
    # A share of the alias's traffic; a canary starts at 0 (app/rollouts/actions.py).
    traffic_weight: int = DEFAULT_TRAFFIC_WEIGHT


@dataclass(frozen=True)
class DeploymentView:
    """A deployment with its model and current workers."""

    id: int
    alias: str
    model_id: int
    model_name: str
    model_path: str
    replicas: int
    serving: ServingSettings
    state: str
    error: str | None
    generation: int
    failures: int
    node: str | None
    traffic_weight: int
    created_at: datetime
    updated_at: datetime
    workers: list[WorkerView] = field(default_factory=list)
    # Labels a node must carry to run this deployment's replicas (placement).
    node_labels: dict[str, str] = field(default_factory=dict)

    @property
    def ready_replicas(self) -> int:
        return sum(1 for w in self.workers if w.is_ready)

    @property
    def placement(self) -> str:
        """Where its replicas may run, for people: a node, labels, both, or any node."""
        parts = [f"node {self.node}"] if self.node else []
        parts += [f"{k}={v}" for k, v in sorted(self.node_labels.items())]
        return ", ".join(parts) or "any node"


def serving_columns(serving: ServingSettings) -> dict[str, Any]:
    """The serving settings as the deployments table stores them (tensor_split a list)."""
    values = serving.serving_values()
    values["tensor_split"] = list(serving.tensor_split) if serving.tensor_split else None
    return values


def parse_node_labels(text: str) -> dict[str, str]:
    """'gpu=h100, zone=a' (as typed by an operator) -> labels; a clear error otherwise."""
    try:
        return parse_labels(text)
    except ValueError as exc:
        raise InvalidSettingError(f"node labels: {exc}") from None


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidSettingError(message)


def _check_bound(bound: Bound, name: str, value: int) -> None:
    problem = bound.problem(name, value)
    _check(problem is None, problem or "")


def _check_placement(node: str | None, labels: Mapping[str, str] | None) -> None:
    """A node name and labels as the supervisor matches them (app/config.py's labels)."""
    problem = NODE_LENGTH.length_problem("node", node)
    _check(problem is None, problem or "")
    labels = labels or {}
    _check(
        len(labels) <= NODE_LABELS.high,
        f"a deployment names at most {NODE_LABELS.high} node labels, not {len(labels)}",
    )
    for key, value in labels.items():
        _check(
            all(
                isinstance(x, str) and len(x) <= LABEL_LENGTH.high and LABEL_PATTERN.match(x)
                for x in ((key, value) if value else (key,))
            ),
            f"node label {str(key)[:80]!r}={str(value)[:80]!r} is not key=value: up to "
            f"{LABEL_LENGTH.high} letters, digits and . _ / -",
        )


def _validate_serving(
    model: Model | None, serving: ServingSettings, allow_ctx_overflow: bool
) -> Model:
    if model is None:
        raise UnknownModelError(
            f"no model called {serving.model!r} in the store; add it with `herd models add` "
            "or rescan the store"
        )
    if model.status != "valid":
        raise InvalidModelError(
            f"model {model.name} cannot be served: it is {model.status}"
            + (f" ({model.error})" if model.error else "")
        )
    problems = serving.serving_problems()
    _check(not problems, "; ".join(problems))
    trained = model.context_length
    if trained and serving.n_ctx > trained and not allow_ctx_overflow:
        raise ContextTooLargeError(
            f"n_ctx {serving.n_ctx} is above the {trained} tokens {model.name} was trained "
            "for; answers degrade past it. Lower n_ctx, or confirm to deploy anyway."
        )
    return model


def _validate_alias(alias: str) -> str:
    alias = alias.strip()
    if not ALIAS_PATTERN.fullmatch(alias):
        raise InvalidSettingError(
            f"alias {alias[:140]!r} is not usable: 1-128 characters, letters, digits and "
            ". _ : / @ -, starting with a letter or digit"
        )
    return alias


def traffic_shares(weights: Mapping[int, int]) -> dict[int, float]:
    """Each deployment's share of its alias's traffic (0..1) for these weights, as the
    gateway's weighted round robin splits it; all zero when no weight is above 0."""
    total = sum(w for w in weights.values() if w > 0)
    return {key: (max(w, 0) / total if total else 0.0) for key, w in weights.items()}


class Deployments:
    """Deployments in one database: validated changes and views with their workers."""

    def __init__(self, engine: Bind, live_s: float = DEFAULT_WORKER_LIVE_S) -> None:
        self.engine = engine
        # Settings.worker_live_s: the liveness rule the gateway routes by.
        self.live_s = live_s

    # ---- changes -------------------------------------------------------------------------

    def create(self, request: DeploymentRequest) -> DeploymentView:
        """Ask for the request's replicas; the supervisors start them."""
        alias = _validate_alias(request.alias)
        _check_bound(REPLICAS, "replicas", request.replicas)
        _check_bound(TRAFFIC_WEIGHT, "traffic_weight", request.traffic_weight)
        _check_placement(request.node, request.node_labels)
        serving = request.serving
        with Session(self.engine) as session, session.begin():
            model = session.scalar(select(Model).where(Model.name == serving.model))
            model = _validate_serving(model, serving, request.allow_ctx_overflow)
            row = Deployment(
                alias=alias,
                model_id=model.id,
                replicas=request.replicas,
                node=(request.node or "").strip() or None,
                node_labels=dict(request.node_labels) if request.node_labels else None,
                state="active",
                traffic_weight=request.traffic_weight,
                **serving_columns(serving),
            )
            session.add(row)
            session.flush()
            deployment_id = row.id
        return self.get(deployment_id)

    def scale(self, deployment_id: int, replicas: int) -> DeploymentView:
        """Change the number of replicas; the supervisor starts or stops the difference."""
        _check_bound(REPLICAS, "replicas", replicas)
        self._update(deployment_id, replicas=replicas)
        return self.get(deployment_id)

    def stop(self, deployment_id: int) -> DeploymentView:
        """Stop every replica but keep the deployment, to start it again later."""
        self._update(deployment_id, state="stopped", failures=0)
        return self.get(deployment_id)

    def start(self, deployment_id: int) -> DeploymentView:
        """(Re)start a stopped or failed deployment with a fresh failure count."""
        self._update(deployment_id, state="active", failures=0, error=None)
        return self.get(deployment_id)

    def roll(
        self, deployment_id: int, serving: ServingSettings, *, allow_ctx_overflow: bool = False
    ) -> DeploymentView:
        """Replace the replicas with ones on a new model or settings, without downtime.

        The supervisor starts replicas of the new generation and stops an old one only once
        a new one is ready.
        """
        with Session(self.engine) as session, session.begin():
            model = session.scalar(select(Model).where(Model.name == serving.model))
            model = _validate_serving(model, serving, allow_ctx_overflow)
            self._update_in(
                session,
                deployment_id,
                model_id=model.id,
                generation=Deployment.generation + 1,
                state="active",
                failures=0,
                error=None,
                **serving_columns(serving),
            )
        return self.get(deployment_id)

    def set_traffic_weights(self, alias: str, weights: Mapping[int, int]) -> None:
        """Set the traffic weights of an alias's deployments in one transaction.

        Weights are relative (95 and 5 make a 5 % canary); gateways apply them within a
        second. Refused when a deployment is not the alias's, or when no running deployment
        would get traffic: that would turn every call to the alias into an error.
        """
        for deployment_id, weight in weights.items():
            _check_bound(TRAFFIC_WEIGHT, f"deployment {deployment_id}: weight", weight)
        with Session(self.engine) as session, session.begin():
            rows = session.execute(
                select(Deployment.id, Deployment.traffic_weight, Deployment.state)
                .where(Deployment.alias == alias)
                .with_for_update()
            ).all()
            known = {r.id for r in rows}
            stray = sorted(set(weights) - known)
            if stray:
                raise UnknownDeploymentError(
                    f"deployment(s) {', '.join(map(str, stray))} do not serve alias {alias!r}"
                )
            after = {r.id: weights.get(r.id, r.traffic_weight) for r in rows}
            _check(
                any(after[r.id] > 0 for r in rows if r.state != "stopped"),
                f"at least one running deployment of {alias!r} needs a weight above 0, "
                "or every call to it fails",
            )
            for deployment_id, weight in weights.items():
                self._update_in(session, deployment_id, traffic_weight=weight)

    def delete(self, deployment_id: int) -> None:
        """Remove the deployment; the supervisor stops its workers."""
        with Session(self.engine) as session, session.begin():
            deleted = session.execute(
                delete(Deployment).where(Deployment.id == deployment_id).returning(Deployment.id)
            ).first()
        if deleted is None:
            raise UnknownDeploymentError(f"no deployment with id {deployment_id}")

    def set_node_selector(
        self, deployment_id: int, node: str | None, labels: Mapping[str, str] | None
    ) -> None:
        """Where a deployment may run: a node name and/or labels every node must carry.

        Placements that no longer match are moved by the next placement step."""
        _check_placement(node, labels)
        self._update(
            deployment_id,
            node=(node or "").strip() or None,
            node_labels=dict(labels) if labels else None,
        )

    # ---- changes the fleet makes itself: supervisors counting failures, joining workers ---

    def record_failure(self, deployment_id: int, reason: str, limit: int) -> tuple[int, bool]:
        """Count a failed replica; returns (consecutive failures, whether it gave up)."""
        with begin(self.engine) as conn:
            row = conn.execute(
                FAILURE_SQL, {"id": deployment_id, "reason": reason, "limit": limit}
            ).first()
        if row is None:  # stopped or deleted meanwhile: nothing to count
            return 0, False
        return int(row.failures), row.state == "failed"

    def fail(self, deployment_id: int, reason: str) -> None:
        """Give up on an active deployment at once (a failure no restart can fix)."""
        with begin(self.engine) as conn:
            conn.execute(
                text(
                    "UPDATE deployments SET state = 'failed', error = :reason "
                    "WHERE id = :id AND state = 'active'"
                ),
                {"id": deployment_id, "reason": reason},
            )

    def reset_failures(self, deployment_id: int) -> None:
        """A replica has been ready long enough: the failure count starts again."""
        with begin(self.engine) as conn:
            conn.execute(
                text(
                    "UPDATE deployments SET failures = 0, error = NULL "
                    "WHERE id = :id AND failures > 0 AND state = 'active'"
                ),
                {"id": deployment_id},
            )

    def join_external(self, alias: str, model_id: int) -> tuple[int, bool]:
        """The deployment a `herd worker --join` serves: the live one for (alias, model), or
        a new external one. Returns (id, created). One advisory lock per alias keeps workers
        that join at the same moment from creating two rows."""
        with begin(self.engine) as conn:
            conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                {"key": f"herd-join:{alias}"},
            )
            params = {"alias": alias, "model_id": model_id}
            found = conn.execute(JOIN_SQL, params).scalar()
            if found is not None:
                return int(found), False
            return int(conn.execute(CREATE_EXTERNAL_SQL, params).scalar_one()), True

    def _update(self, deployment_id: int, **values: Any) -> None:
        with Session(self.engine) as session, session.begin():
            self._update_in(session, deployment_id, **values)

    @staticmethod
    def _update_in(session: Session, deployment_id: int, **values: Any) -> None:
        changed = session.execute(
            update(Deployment)
            .where(Deployment.id == deployment_id)
            .values(updated_at=func.now(), **values)
            .returning(Deployment.id)
        ).first()
        if changed is None:
            raise UnknownDeploymentError(f"no deployment with id {deployment_id}")

    # ---- views ---------------------------------------------------------------------------

    def get(self, deployment_id: int) -> DeploymentView:
        """One deployment with its workers."""
        found = self._views(deployment_id)
        if not found:
            raise UnknownDeploymentError(f"no deployment with id {deployment_id}")
        return found[0]

    def all(self) -> list[DeploymentView]:
        """Every deployment with its workers, newest first."""
        return self._views(None)

    def workers(self, deployment_id: int | None = None) -> list[WorkerView]:
        """Replicas of one deployment (or of all), supervised processes and worker rows merged."""
        return worker_views(self.engine, deployment_id, self.live_s)

    def _views(self, deployment_id: int | None) -> list[DeploymentView]:
        query = (
            select(Deployment, Model.name, Model.path)
            .join(Model, Model.id == Deployment.model_id)
            .order_by(Deployment.id.desc())
        )
        if deployment_id is not None:
            query = query.where(Deployment.id == deployment_id)
        with Session(self.engine) as session:
            found = session.execute(query).all()
        workers = self.workers(deployment_id)
        views = []
        for d, model_name, model_path in found:
            views.append(
                DeploymentView(
                    id=d.id,
                    alias=d.alias,
                    model_id=d.model_id,
                    model_name=model_name,
                    model_path=model_path,
                    replicas=d.replicas,
                    serving=ServingSettings(model=model_name, **serving_values_from(d)),
                    state=d.state,
                    error=d.error,
                    generation=d.generation,
                    failures=d.failures,
                    node=d.node,
                    node_labels=dict(d.node_labels or {}),
                    traffic_weight=d.traffic_weight,
                    created_at=d.created_at,
                    updated_at=d.updated_at,
                    workers=[w for w in workers if w.deployment_id == d.id],
                )
            )
        return views
