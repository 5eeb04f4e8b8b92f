"""Per model version (a model served under an alias) numbers for a period, and the side by
side comparison of the versions sharing an alias (an A/B or canary split)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

from app.analytics.catalog import METRICS, totals
from app.analytics.monitoring import SESSION_IDLE
from app.analytics.queries import fetch_rows, ratio
from app.analytics.scope import Scope
from app.analytics.session_counts import SESSION_COUNTS
from app.analytics.stats import ProportionTest, two_proportion_test, wilson_interval

# Sessions per version (not in the metric rollups: a session spans hours and requests).
VERSION_SESSIONS_SQL = text(
    f"""
    SELECT alias, model_id, sum(ended) AS sessions_ended, sum(one_turn) AS one_turn_sessions,
           sum(turns) AS turns, sum(regenerates) AS regenerates
    FROM ({SESSION_COUNTS}) c
    GROUP BY 1, 2
    """
)

# When each version first served its alias (any class), and its name.
VERSION_FIRST_SQL = text(
    """
    SELECT f.alias, f.model_id, f.first_hour, m.name AS model
    FROM (SELECT alias, model_id, min(hour) AS first_hour
          FROM requests_hourly WHERE requests > 0 GROUP BY 1, 2) f
    LEFT JOIN models m ON m.id = f.model_id
    """
)


@dataclass(frozen=True)
class VersionStats:
    """One model version's numbers over a period."""

    alias: str
    model_id: int | None
    model: str | None
    requests: int
    errors: int
    ratings: int
    thumbs_up: int
    comments: int
    regenerates: int
    turns: int
    tokens_per_second: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    total_p50_ms: float | None
    total_p95_ms: float | None
    sessions_ended: int
    one_turn_sessions: int
    first_hour: datetime | None

    @property
    def key(self) -> tuple[str, int | None]:
        return self.alias, self.model_id

    @property
    def label(self) -> str:
        return f"{self.model or 'unknown model'} @ {self.alias or '(no alias)'}"

    @property
    def thumbs_up_ratio(self) -> float | None:
        return ratio(self.thumbs_up, self.ratings)

    @property
    def thumbs_up_interval(self) -> tuple[float, float]:
        return wilson_interval(self.thumbs_up, self.ratings)

    @property
    def error_rate(self) -> float | None:
        return ratio(self.errors, self.requests)

    @property
    def one_turn_share(self) -> float | None:
        return ratio(self.one_turn_sessions, self.sessions_ended)

    @property
    def regenerate_rate(self) -> float | None:
        return ratio(self.regenerates, self.turns)

    def as_dict(self) -> dict[str, Any]:
        low, high = self.thumbs_up_interval
        return {
            "alias": self.alias,
            "model_id": self.model_id,
            "model": self.model,
            "requests": self.requests,
            "error_rate": self.error_rate,
            "ratings": self.ratings,
            "thumbs_up_ratio": self.thumbs_up_ratio,
            "thumbs_up_low": low if self.ratings else None,
            "thumbs_up_high": high if self.ratings else None,
            "ttft_p95_ms": self.ttft_p95_ms,
            "total_p95_ms": self.total_p95_ms,
            "tokens_per_second": self.tokens_per_second,
            "one_turn_share": self.one_turn_share,
            "regenerate_rate": self.regenerate_rate,
        }


def version_stats(engine: Engine, scope: Scope) -> list[VersionStats]:
    """Every (alias, model) with traffic in scope, oldest version of each alias first; the
    numbers are the metric catalog's."""
    found = totals(engine, scope, by=("alias", "model_id"))
    params = {**scope.params(), "idle": SESSION_IDLE}
    sessions = {
        (r["alias"], r["model_id"]): r for r in fetch_rows(engine, VERSION_SESSIONS_SQL, params)
    }
    first = {(r["alias"], r["model_id"]): r for r in fetch_rows(engine, VERSION_FIRST_SQL, {})}
    out = []
    for item in found:
        key = (item.alias or "", item.model_id or 0)
        s, f = sessions.get(key, {}), first.get(key, {})
        out.append(
            VersionStats(
                alias=item.alias or "",
                model_id=item.model_id,
                model=f.get("model"),
                requests=int(item.count("requests")),
                errors=int(item.count("errors")),
                ratings=int(item.count("ratings")),
                thumbs_up=int(item.count("thumbs_up")),
                comments=int(item.count("comments")),
                regenerates=int(s.get("regenerates") or 0),
                turns=int(s.get("turns") or 0),
                tokens_per_second=METRICS["tokens_per_second"].value(item),
                ttft_p50_ms=item.quantile("ttft", 0.5),
                ttft_p95_ms=item.quantile("ttft", 0.95),
                total_p50_ms=item.quantile("total", 0.5),
                total_p95_ms=item.quantile("total", 0.95),
                sessions_ended=int(s.get("sessions_ended") or 0),
                one_turn_sessions=int(s.get("one_turn_sessions") or 0),
                first_hour=f.get("first_hour"),
            )
        )
    out.sort(key=lambda v: (v.alias, v.first_hour or datetime.max.replace(tzinfo=UTC),
                            v.model or ""))  # fmt: skip
    return out


@dataclass(frozen=True)
class VersionComparison:
    """A version against the alias's baseline (its oldest version in the data)."""

    baseline: VersionStats
    candidate: VersionStats
    thumbs_up: ProportionTest | None
    errors: ProportionTest | None
    alpha: float

    @property
    def total_p95_ratio(self) -> float | None:
        return ratio(self.candidate.total_p95_ms, self.baseline.total_p95_ms)

    def as_dict(self) -> dict[str, Any]:
        up, err = self.thumbs_up, self.errors
        return {
            "baseline": self.baseline.model,
            "candidate": self.candidate.model,
            "thumbs_up_baseline": up.p_a if up else None,
            "thumbs_up_candidate": up.p_b if up else None,
            "thumbs_up_difference": up.difference if up else None,
            "thumbs_up_p_value": up.p_value if up else None,
            "thumbs_up_significant": up.significant(self.alpha) if up else False,
            "error_rate_difference": err.difference if err else None,
            "error_rate_p_value": err.p_value if err else None,
            "error_rate_significant": err.significant(self.alpha) if err else False,
            "p95_latency_ratio": self.total_p95_ratio,
        }


def compare_versions(
    engine: Engine, scope: Scope, alias: str, alpha: float = 0.05
) -> list[VersionComparison]:
    """Each newer version under alias against the oldest one, with significance tests."""
    versions = [v for v in version_stats(engine, scope) if v.alias == alias]
    if len(versions) < 2:
        return []
    baseline, others = versions[0], versions[1:]
    return [
        VersionComparison(
            baseline=baseline,
            candidate=other,
            thumbs_up=two_proportion_test(
                baseline.thumbs_up, baseline.ratings, other.thumbs_up, other.ratings
            ),
            errors=two_proportion_test(
                baseline.errors, baseline.requests, other.errors, other.requests
            ),
            alpha=alpha,
        )
        for other in others
    ]


OPTIONS_SQL = text(
    """
    SELECT DISTINCT h.alias, h.model_id, m.name AS model, h.worker_id
    FROM (SELECT DISTINCT alias, model_id, worker_id FROM requests_hourly) h
    LEFT JOIN models m ON m.id = h.model_id
    """
)


@dataclass(frozen=True)
class FilterOptions:
    """What the filter widgets offer: aliases, models (id -> name) and workers seen."""

    aliases: list[str]
    models: dict[int, str]
    workers: list[int]


def filter_options(engine: Engine) -> FilterOptions:
    rows = fetch_rows(engine, OPTIONS_SQL, {})
    return FilterOptions(
        aliases=sorted({r["alias"] for r in rows if r["alias"]}),
        models={
            r["model_id"]: r["model"] or f"model {r['model_id']}" for r in rows if r["model_id"]
        },
        workers=sorted({r["worker_id"] for r in rows if r["worker_id"]}),
    )
