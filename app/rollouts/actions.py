"""Canary, promotion and rollback of an alias, and the guard that rolls a bad canary back.

The only code that writes the `rollouts` table. Deployments change only through
app.control.deployments.Deployments (create, weights, start, stop), so every change reaches the
supervisors and gateways the usual way. Each action records the alias's deployments (model,
weight, state) before and after, the latest evaluations of the models involved, and who.

- canary: a new deployment of the candidate model beside the alias's current ones, with the
  same serving settings, at a chosen share of the traffic (the current weights are kept;
  the canary's weight is set so that it gets that share).
- promote: the open canary gets all the traffic; the previous deployments stay deployed at
  weight 0 until the grace period (HERD_ROLLOUT_GRACE_S) ends, then they are stopped.
- rollback: the weights and states from before the open canary (or before the canary of
  the open promotion) come back in one step; the canary's deployment is stopped at weight 0.
- guard: a canary whose error rate or p95 latency since it started is worse than the
  current version's by the configured margins, over a minimum of requests on both sides, is
  rolled back automatically ('auto_rollback', with the numbers).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.control import audit
from app.control.audit import Actor, Via
from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
from app.db.tables import Deployment, Model, Rollout
from app.engine.serving import serving_values_from
from app.evaluation.store import EvaluationStore

# Serialises rollout changes (and the guard run by several supervisors) across processes.
_LOCK_KEY = 0x4845524452_01

_REQUEST_STATS = text("""
    SELECT deployment_id, count(*) AS requests,
           count(*) FILTER (WHERE herd_is_error(status, http_status)) AS errors,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY total_ms) AS p95_ms
    FROM requests
    WHERE alias = :alias AND created_at >= :since AND deployment_id = ANY(:ids)
      AND NOT cache_hit
    GROUP BY deployment_id
""")


class RolloutError(ValueError):
    """A rollout action that cannot be done; the message says why."""


def _snapshot(session: Session, alias: str) -> list[dict[str, Any]]:
    rows = session.execute(
        select(
            Deployment.id,
            Deployment.model_id,
            Model.name,
            Deployment.traffic_weight,
            Deployment.state,
        )
        .join(Model, Model.id == Deployment.model_id)
        .where(Deployment.alias == alias)
        .order_by(Deployment.id)
    ).all()
    return [
        {"deployment_id": r[0], "model_id": r[1], "model": r[2], "weight": r[3], "state": r[4]}
        for r in rows
    ]


class Rollouts:
    """Canary, promote, rollback and guard the deployments of aliases."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        via: Via = Via.PAGE,
        origin: str | None = None,
        source: str | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.deployments = Deployments(engine)
        # How the actions come in, for their audit_log rows: the way, the page or command
        # ("evaluation", "herd rollout canary", "canary guard") and the client or host.
        self.via = via
        self.origin = origin
        self.source = source

    # ---- reading ---------------------------------------------------------------------------

    def snapshot(self, alias: str) -> list[dict[str, Any]]:
        """The alias's deployments: id, model, weight, state."""
        with Session(self.engine) as session:
            return _snapshot(session, alias)

    def open_action(self, alias: str) -> Rollout | None:
        """The alias's canary or promotion that nothing has closed yet."""
        with Session(self.engine, expire_on_commit=False) as session:
            return session.scalar(
                select(Rollout)
                .where(
                    Rollout.alias == alias,
                    Rollout.closed_at.is_(None),
                    Rollout.action.in_(["canary", "promote"]),
                )
                .order_by(Rollout.id.desc())
                .limit(1)
            )

    def history(self, alias: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Recorded actions, newest first."""
        query = select(Rollout).order_by(Rollout.id.desc()).limit(limit)
        if alias is not None:
            query = query.where(Rollout.alias == alias)
        with Session(self.engine) as session:
            return [
                {c.name: getattr(r, c.name) for c in Rollout.__table__.columns}
                for r in session.scalars(query)
            ]

    def _cited(self, model_ids: set[int]) -> list[dict[str, Any]]:
        """The latest evaluation of each model involved, as it stood at the action."""
        rows = EvaluationStore(self.engine).latest()
        return [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
            for row in rows
            if row["model_id"] in model_ids
        ]

    # ---- actions ---------------------------------------------------------------------------

    def _record(self, session: Session, **values: Any) -> int:
        row = Rollout(**values)
        session.add(row)
        session.flush()
        # Every change is in the audit log too, in the same transaction as the record.
        audit.record(
            session.connection(),
            Actor(values["decided_by"], self.via, source=self.source, origin=self.origin),
            f"rollout.{values['action']}",
            "alias",
            values["alias"],
            values["before"],
            values["after"],
        )
        return row.id

    def _lock(self, session: Session) -> None:
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})

    def canary(
        self,
        alias: str,
        model: str,
        percent: float,
        decided_by: str,
        *,
        note: str = "",
        decision_id: int | None = None,
        signals: dict[str, Any] | None = None,
    ) -> int:
        """Deploy model beside alias's current version at percent of its traffic; signals
        (e.g. the page it was started from) are recorded beside the share."""
        if not 0 < percent < 100:
            raise RolloutError(f"a canary gets between 0 and 100 % of the traffic, not {percent}")
        if self.open_action(alias) is not None:
            raise RolloutError(
                f"{alias!r} has a canary or promotion open; promote or roll it back first"
            )
        before = self.snapshot(alias)
        current = [d for d in before if d["weight"] > 0 and d["state"] == "active"]
        if not current:
            raise RolloutError(f"{alias!r} has no deployment serving traffic to compare with")
        if any(d["model"] == model for d in current):
            raise RolloutError(f"{model} already serves {alias!r}")
        with Session(self.engine) as session:
            base = session.get(Deployment, current[0]["deployment_id"])
            assert base is not None
            # The canary runs as the current version does, only on another model.
            serving = ServingSettings(model=model, **serving_values_from(base))
            node, labels = base.node, base.node_labels
        created = self.deployments.create(
            DeploymentRequest(
                alias, serving, replicas=1, node=node, node_labels=labels, traffic_weight=0
            )
        )
        total = sum(d["weight"] for d in current)
        weight = max(1, round(total * percent / (100 - percent)))
        self.deployments.set_traffic_weights(alias, {created.id: weight})
        after = self.snapshot(alias)
        with Session(self.engine) as session, session.begin():
            self._lock(session)
            return self._record(
                session, alias=alias, action="canary", candidate_deployment_id=created.id,
                candidate_model_id=created.model_id, before=before, after=after,
                evaluation=self._cited({created.model_id, *(d["model_id"] for d in current)}),
                signals={**(signals or {}), "percent": percent}, decision_id=decision_id,
                decided_by=decided_by, note=note,
            )  # fmt: skip

    def promote(self, alias: str, decided_by: str, *, note: str = "") -> int:
        """Give the open canary all of the alias's traffic; the rest stay at weight 0."""
        action = self.open_action(alias)
        if action is None or action.action != "canary":
            raise RolloutError(f"{alias!r} has no open canary to promote")
        before = self.snapshot(alias)
        candidate = action.candidate_deployment_id
        if candidate not in {d["deployment_id"] for d in before}:
            raise RolloutError(f"the canary deployment {candidate} of {alias!r} is gone")
        weights = {d["deployment_id"]: 0 for d in before}
        weights[candidate] = 100
        self.deployments.set_traffic_weights(alias, weights)
        after = self.snapshot(alias)
        grace = datetime.now(UTC) + timedelta(seconds=self.settings.rollout_grace_s)
        with Session(self.engine) as session, session.begin():
            self._lock(session)
            self._close(session, action.id)
            return self._record(
                session, alias=alias, action="promote", candidate_deployment_id=candidate,
                candidate_model_id=action.candidate_model_id, before=before, after=after,
                evaluation=self._cited({d["model_id"] for d in before}),
                signals={"canary": action.id}, decided_by=decided_by, note=note,
                grace_until=grace,
            )  # fmt: skip

    def rollback(
        self,
        alias: str,
        decided_by: str,
        *,
        note: str = "",
        decision_id: int | None = None,
        signals: dict[str, Any] | None = None,
        automatic: bool = False,
    ) -> int:
        """Restore the weights and states from before the alias's open action, in one step."""
        action = self.open_action(alias)
        if action is None:
            raise RolloutError(f"{alias!r} has no open canary or promotion to roll back")
        before = self.snapshot(alias)
        target = action.before
        if action.action == "promote":
            # Back to the version before the canary, not to the canary's split.
            with Session(self.engine) as session:
                canary = session.get(Rollout, int(action.signals.get("canary", 0)))
                if canary is not None:
                    target = canary.before
        earlier = {d["deployment_id"]: d for d in target}
        for d in before:
            old = earlier.get(d["deployment_id"])
            if old is not None and old["state"] == "active" and d["state"] != "active":
                self.deployments.start(d["deployment_id"])  # stopped after the grace period
        weights = {d["deployment_id"]: (earlier[d["deployment_id"]]["weight"]
                                        if d["deployment_id"] in earlier else 0)
                   for d in before}  # fmt: skip
        self.deployments.set_traffic_weights(alias, weights)
        for d in before:
            if d["deployment_id"] not in earlier and d["state"] == "active":
                self.deployments.stop(d["deployment_id"])  # the canary, no longer wanted
        after = self.snapshot(alias)
        with Session(self.engine) as session, session.begin():
            self._lock(session)
            self._close(session, action.id)
            return self._record(
                session, alias=alias, action="auto_rollback" if automatic else "rollback",
                candidate_deployment_id=action.candidate_deployment_id,
                candidate_model_id=action.candidate_model_id, before=before, after=after,
                evaluation=self._cited({d["model_id"] for d in before}),
                signals={"rolled_back": action.id, **(signals or {})},
                decision_id=decision_id, decided_by=decided_by, note=note,
            )  # fmt: skip

    @staticmethod
    def _close(session: Session, action_id: int) -> None:
        session.execute(
            update(Rollout).where(Rollout.id == action_id).values(closed_at=datetime.now(UTC))
        )

    # ---- background: the guard and the end of grace periods ------------------------------

    def canary_health(self, action: Rollout) -> dict[str, Any]:
        """Requests, error rate and p95 of the canary and of the current version since the
        canary started (cache hits excluded: they say nothing about a model)."""
        current_ids = [d["deployment_id"] for d in action.before if d["weight"] > 0]
        ids = [action.candidate_deployment_id, *current_ids]
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    _REQUEST_STATS, {"alias": action.alias, "since": action.created_at, "ids": ids}
                )
                .mappings()
                .all()
            )
        by_id = {r["deployment_id"]: r for r in rows}

        def side(deployments: list[int | None]) -> dict[str, Any]:
            found = [by_id[d] for d in deployments if d in by_id]
            n = sum(int(r["requests"]) for r in found)
            errors = sum(int(r["errors"]) for r in found)
            p95 = max((float(r["p95_ms"]) for r in found if r["p95_ms"] is not None),
                      default=None)  # fmt: skip
            return {"requests": n, "errors": errors,
                    "error_rate": errors / n if n else None, "p95_ms": p95}  # fmt: skip

        return {"canary": side([action.candidate_deployment_id]),
                "current": side(list(current_ids))}  # fmt: skip

    def guard(self, alias: str) -> int | None:
        """Roll back the alias's canary if it is worse than the current version by the
        configured margins; the rollback's id, or None."""
        action = self.open_action(alias)
        if action is None or action.action != "canary":
            return None
        health = self.canary_health(action)
        canary, current = health["canary"], health["current"]
        minimum = self.settings.canary_guard_min_requests
        if canary["requests"] < minimum or current["requests"] < minimum:
            return None
        reasons = []
        if canary["error_rate"] > current["error_rate"] + self.settings.canary_guard_error_margin:
            reasons.append(
                f"error rate {canary['error_rate']:.1%} against {current['error_rate']:.1%}"
            )
        margin = 1 + self.settings.canary_guard_p95_margin
        if (canary["p95_ms"] is not None and current["p95_ms"] is not None
                and canary["p95_ms"] > current["p95_ms"] * margin):  # fmt: skip
            reasons.append(f"p95 {canary['p95_ms']:.0f} ms against {current['p95_ms']:.0f} ms")
        if not reasons:
            return None
        return self.rollback(
            alias, "guard", automatic=True, signals={**health, "reasons": reasons},
            note="canary worse than the current version: " + "; ".join(reasons),
        )  # fmt: skip

    def end_grace_periods(self) -> list[int]:
        """Stop the previous deployments of promotions whose grace period is over."""
        now = datetime.now(UTC)
        with Session(self.engine, expire_on_commit=False) as session:
            due = list(
                session.scalars(
                    select(Rollout).where(
                        Rollout.action == "promote",
                        Rollout.closed_at.is_(None),
                        Rollout.grace_until <= now,
                    )
                )
            )
        stopped = []
        for action in due:
            for d in self.snapshot(action.alias):
                if d["deployment_id"] != action.candidate_deployment_id and d["weight"] == 0 \
                        and d["state"] == "active":  # fmt: skip
                    self.deployments.stop(d["deployment_id"])
                    stopped.append(d["deployment_id"])
            with Session(self.engine) as session, session.begin():
                self._close(session, action.id)
        return stopped

    def tick(self) -> None:
        """The periodic work (run by the supervisor): guard every open canary, end grace
        periods."""
        with Session(self.engine) as session:
            aliases = session.scalars(
                select(Rollout.alias)
                .where(Rollout.closed_at.is_(None), Rollout.action == "canary")
                .distinct()
            ).all()
        for alias in aliases:
            self.guard(alias)
        self.end_grace_periods()
