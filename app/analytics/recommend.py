"""From signals to a recommendation with its reasons: retrain, roll back, keep, or "not
enough data" when no signal could be computed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, text

from app.analytics.queries import fetch_rows
from app.analytics.scope import Scope
from app.analytics.signals import (
    ComplaintCluster,
    Signal,
    SignalKind,
    Thresholds,
    complaint_cluster,
    version_signals,
)
from app.analytics.versions import VersionStats, version_stats


class Action(StrEnum):
    RETRAIN = "retrain"
    ROLLBACK = "rollback"
    KEEP = "keep"


NOT_ENOUGH_DATA = "not enough data"


@dataclass(frozen=True)
class Recommendation:
    """What to do with a version and why; action None: no signal could be computed."""

    action: Action | None
    reasons: list[str]
    # The version that served the alias before this one, when rolling back is possible.
    rollback_to: str | None = None

    @property
    def verdict(self) -> str:
        """The recommendation in words: "rollback to X", "retrain", "keep" or NOT_ENOUGH_DATA."""
        if self.action is None:
            return NOT_ENOUGH_DATA
        return self.action.value + (f" to {self.rollback_to}" if self.rollback_to else "")


@dataclass(frozen=True)
class VersionAssessment:
    """One version over a period: its numbers, the previous period's, signals, advice."""

    version: VersionStats
    previous: VersionStats | None
    signals: list[Signal]
    complaints: ComplaintCluster | None
    recommendation: Recommendation

    @property
    def fired(self) -> list[Signal]:
        return [s for s in self.signals if s.fired]

    def signals_json(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.signals]


EARLIER_VERSIONS_SQL = text(
    """
    SELECT h.model_id, m.name AS model, min(h.hour) AS first_hour, max(h.hour) AS last_hour
    FROM requests_hourly h LEFT JOIN models m ON m.id = h.model_id
    WHERE h.alias = :alias AND h.model_id <> 0 AND h.requests > 0
    GROUP BY 1, 2
    HAVING min(h.hour) < :before
    ORDER BY min(h.hour) DESC
    """
)


def earlier_version(engine: Engine, version: VersionStats) -> str | None:
    """The newest other model that served the alias before this version first did."""
    if version.first_hour is None or not version.alias:
        return None
    rows = fetch_rows(
        engine, EARLIER_VERSIONS_SQL, {"alias": version.alias, "before": version.first_hour}
    )
    for row in rows:
        if row["model_id"] != version.model_id:
            return str(row["model"] or f"model {row['model_id']}")
    return None


def recommend(signals: list[Signal], rollback_to: str | None) -> Recommendation:
    """The action the fired signals point to, with every reason spelled out; no action when
    none of the signals had the data to be computed."""
    if not any(s.judged for s in signals):
        reasons = [s.summary for s in signals] or ["no traffic to judge"]
        return Recommendation(None, ["no signal could be computed", *reasons])
    fired = {s.kind: s for s in signals if s.fired}
    regression = [
        fired[k]
        for k in (SignalKind.LATENCY_REGRESSION, SignalKind.SATISFACTION_DROP)
        if k in fired
    ]
    quality = [
        fired[k]
        for k in (
            SignalKind.LOW_SATISFACTION,
            SignalKind.SATISFACTION_DROP,
            SignalKind.COMPLAINTS,
            SignalKind.ONE_TURN_ABANDONMENT,
        )
        if k in fired
    ]
    if regression and rollback_to:
        reasons = [s.summary for s in regression]
        reasons += [s.summary for s in quality if s not in regression]
        reasons.append(
            f"{rollback_to} served this alias before this version: rolling back restores it "
            "while the regression is investigated"
        )
        return Recommendation(Action.ROLLBACK, reasons, rollback_to)
    if quality:
        reasons = [s.summary for s in quality]
        reasons.append(
            "users rate this version's answers poorly: retrain on the exported preference and "
            "SFT data"
            + ("" if rollback_to else " (no earlier version under this alias to roll back to)")
        )
        return Recommendation(Action.RETRAIN, reasons)
    if regression:
        reasons = [s.summary for s in regression]
        reasons.append(
            "latency regressed but there is no earlier version to roll back to and answers are "
            "rated fine: keep it and check the deployment (GPU offload, replicas, load)"
        )
        return Recommendation(Action.KEEP, reasons)
    return Recommendation(Action.KEEP, ["no signal fired", *[s.summary for s in signals]])


def assess_versions(
    engine: Engine, scope: Scope, thresholds: Thresholds | None = None
) -> list[VersionAssessment]:
    """Signals and a recommendation for each version with traffic in scope."""
    t = thresholds or Thresholds()
    before = {v.key: v for v in version_stats(engine, scope.previous())}
    out = []
    for version in version_stats(engine, scope):
        if version.model_id is None:
            continue
        complaints = complaint_cluster(engine, scope, version) if version.comments else None
        previous = before.get(version.key)
        signals = version_signals(version, previous, complaints, t)
        out.append(
            VersionAssessment(
                version=version,
                previous=previous,
                signals=signals,
                complaints=complaints,
                recommendation=recommend(signals, earlier_version(engine, version)),
            )
        )
    return out


def period_label(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%d %H:%M} - {end:%Y-%m-%d %H:%M} UTC"
