"""Retraining signals per model version, computed from the rollups and the feedback rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, text

from app.analytics.queries import fetch_rows, ratio
from app.analytics.scope import Scope
from app.analytics.stats import two_proportion_test
from app.analytics.versions import VersionStats

# Words that say nothing about what went wrong; terms are lower-case runs of [a-z0-9].
_STOPWORDS_TEXT = """
the and for are but not you your was were this that with have has had its too very just what
when why how all any can could would should did does doesn don into from than then them they
there their about out also only again answer response bot model really much more some like get
got one two use used please thanks thank yes
"""
STOPWORDS = sorted(set(_STOPWORDS_TEXT.split()))


class SignalKind(StrEnum):
    LOW_SATISFACTION = "low_satisfaction"
    SATISFACTION_DROP = "satisfaction_drop"
    LATENCY_REGRESSION = "latency_regression"
    COMPLAINTS = "complaint_cluster"
    ONE_TURN_ABANDONMENT = "one_turn_abandonment"


@dataclass(frozen=True)
class Thresholds:
    """When a signal fires; the defaults suit a few hundred ratings a day."""

    min_thumbs_up: float = 0.7
    min_ratings: int = 30
    # Significance for changes against the previous period, and the smallest drop that matters.
    alpha: float = 0.01
    min_drop: float = 0.05
    latency_ratio: float = 1.3
    min_requests: int = 100
    min_complaints: int = 15
    complaint_term_share: float = 0.4
    max_one_turn_share: float = 0.5
    min_sessions: int = 30


@dataclass(frozen=True)
class Signal:
    """One check on one version: whether it fired, a sentence saying why, and the numbers;
    judged is False when there was too little data to check it (it then never fires)."""

    kind: SignalKind
    fired: bool
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    judged: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind.value}


@dataclass(frozen=True)
class ComplaintCluster:
    """The most frequent terms of a version's thumbs-down comments, with examples."""

    comments: int
    terms: list[tuple[str, int]]
    examples: list[dict[str, Any]]

    @property
    def top_share(self) -> float:
        return self.terms[0][1] / self.comments if self.terms and self.comments else 0.0


# A version's thumbs-down comments in the window: its rated requests with such a vote come
# from feedback_reviews (ix_feedback_reviews_down_comments), then their votes are read. A
# vote in the window implies its request's first and last votes bracket it.
DOWN_COMMENTS_FROM = "feedback_reviews r JOIN feedback f ON f.request_id = r.request_id"
DOWN_COMMENTS = """
      r.down_comments > 0 AND coalesce(r.alias, '') = :alias
        AND (r.model_id = :model_id OR (CAST(:model_id AS bigint) IS NULL AND r.model_id IS NULL))
        AND r.last_voted_at >= :start AND r.first_voted_at < :end
        AND f.rating = -1 AND coalesce(f.comment, '') <> ''
        AND f.created_at >= :start AND f.created_at < :end
"""

COMPLAINT_TERMS_SQL = text(
    f"""
    WITH c AS (
      SELECT f.request_id, lower(f.comment) AS comment
      FROM {DOWN_COMMENTS_FROM}
      WHERE {DOWN_COMMENTS}
    )
    SELECT t.term, count(DISTINCT c.request_id) AS n, (SELECT count(*) FROM c) AS total
    FROM c, regexp_split_to_table(c.comment, '[^a-z0-9]+') AS t(term)
    WHERE length(t.term) >= 3 AND NOT (t.term = ANY(CAST(:stopwords AS text[])))
    GROUP BY t.term
    ORDER BY n DESC, t.term
    LIMIT :top
    """
)

COMPLAINT_EXAMPLES_SQL = text(
    f"""
    SELECT f.request_id, f.created_at, f.comment, msg.prompt, msg.response
    FROM {DOWN_COMMENTS_FROM}
    LEFT JOIN messages msg ON msg.request_id = f.request_id
    WHERE {DOWN_COMMENTS}
      AND strpos(lower(f.comment), :term) > 0
    ORDER BY (msg.request_id IS NULL), f.created_at DESC
    LIMIT :examples
    """
)


def complaint_cluster(
    engine: Engine, scope: Scope, version: VersionStats, top: int = 8, examples: int = 3
) -> ComplaintCluster:
    """Top terms of the version's thumbs-down comments in scope, examples for the first."""
    params = {
        "start": scope.start,
        "end": scope.end,
        "alias": version.alias,
        "model_id": version.model_id,
        "stopwords": STOPWORDS,
        "top": top,
    }
    rows = fetch_rows(engine, COMPLAINT_TERMS_SQL, params)
    if not rows:
        return ComplaintCluster(0, [], [])
    terms = [(r["term"], int(r["n"])) for r in rows]
    found = fetch_rows(
        engine, COMPLAINT_EXAMPLES_SQL, {**params, "term": terms[0][0], "examples": examples}
    )
    return ComplaintCluster(int(rows[0]["total"]), terms, found)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def version_signals(
    current: VersionStats,
    previous: VersionStats | None,
    complaints: ComplaintCluster | None,
    t: Thresholds,
) -> list[Signal]:
    """Every signal for one version, fired or not, each with its reason."""
    return [
        _low_satisfaction(current, t),
        _satisfaction_drop(current, previous, t),
        _latency_regression(current, previous, t),
        _complaints(complaints, t),
        _one_turn(current, previous, t),
    ]


def _low_satisfaction(v: VersionStats, t: Thresholds) -> Signal:
    kind = SignalKind.LOW_SATISFACTION
    low, high = v.thumbs_up_interval
    evidence = {
        "ratings": v.ratings,
        "thumbs_up": v.thumbs_up,
        "ratio": v.thumbs_up_ratio,
        "wilson_low": low,
        "wilson_high": high,
        "threshold": t.min_thumbs_up,
    }
    if v.ratings < t.min_ratings:
        return Signal(
            kind, False, f"only {v.ratings} ratings (< {t.min_ratings})", evidence, judged=False
        )
    ratio_ = v.thumbs_up_ratio or 0.0
    text_ = (
        f"thumbs-up {_pct(ratio_)} (95% CI {_pct(low)}-{_pct(high)}) on {v.ratings} ratings, "
        f"{'below' if ratio_ < t.min_thumbs_up else 'at or above'} the "
        f"{_pct(t.min_thumbs_up)} threshold"
    )
    return Signal(kind, ratio_ < t.min_thumbs_up, text_, evidence)


def _satisfaction_drop(v: VersionStats, prev: VersionStats | None, t: Thresholds) -> Signal:
    kind = SignalKind.SATISFACTION_DROP
    if prev is None or prev.ratings < t.min_ratings or v.ratings < t.min_ratings:
        n = 0 if prev is None else prev.ratings
        summary = f"not enough ratings to compare ({n} before, {v.ratings} now)"
        return Signal(kind, False, summary, judged=False)
    test = two_proportion_test(prev.thumbs_up, prev.ratings, v.thumbs_up, v.ratings)
    assert test is not None
    fired = test.p_value < t.alpha and -test.difference >= t.min_drop
    evidence = {
        "before": test.p_a,
        "now": test.p_b,
        "difference": test.difference,
        "p_value": test.p_value,
        "ratings_before": prev.ratings,
        "ratings_now": v.ratings,
    }
    text_ = (
        f"thumbs-up {_pct(test.p_a)} -> {_pct(test.p_b)} against the previous period "
        f"(p = {test.p_value:.2g}, {'significant' if test.p_value < t.alpha else 'not significant'}"
        f" at {t.alpha})"
    )
    return Signal(kind, fired, text_, evidence)


def _latency_regression(v: VersionStats, prev: VersionStats | None, t: Thresholds) -> Signal:
    kind = SignalKind.LATENCY_REGRESSION
    if prev is None or prev.requests < t.min_requests or v.requests < t.min_requests:
        summary = "not enough requests in both periods to compare latency"
        return Signal(kind, False, summary, judged=False)
    total = ratio(v.total_p95_ms, prev.total_p95_ms)
    ttft = ratio(v.ttft_p95_ms, prev.ttft_p95_ms)
    worst = max((x for x in (total, ttft) if x is not None), default=None)
    evidence = {
        "total_p95_before_ms": prev.total_p95_ms,
        "total_p95_now_ms": v.total_p95_ms,
        "ttft_p95_before_ms": prev.ttft_p95_ms,
        "ttft_p95_now_ms": v.ttft_p95_ms,
        "total_ratio": total,
        "ttft_ratio": ttft,
        "threshold": t.latency_ratio,
    }
    if worst is None:
        return Signal(kind, False, "no latency recorded", evidence, judged=False)
    text_ = (
        f"p95 latency {prev.total_p95_ms or 0:.0f} -> {v.total_p95_ms or 0:.0f} ms "
        f"(x{total or 0:.2f}), p95 TTFT x{ttft or 0:.2f} against the previous period"
    )
    return Signal(kind, worst >= t.latency_ratio, text_, evidence)


def _complaints(c: ComplaintCluster | None, t: Thresholds) -> Signal:
    kind = SignalKind.COMPLAINTS
    if c is None or c.comments < t.min_complaints:
        n = 0 if c is None else c.comments
        summary = f"{n} thumbs-down comments (< {t.min_complaints})"
        return Signal(kind, False, summary, judged=False)
    terms = ", ".join(f"'{term}' ({n})" for term, n in c.terms[:5])
    fired = c.top_share >= t.complaint_term_share
    text_ = f"{c.comments} thumbs-down comments; most frequent terms: {terms}"
    evidence = {"comments": c.comments, "terms": c.terms, "top_share": c.top_share}
    return Signal(kind, fired, text_, evidence)


def _one_turn(v: VersionStats, prev: VersionStats | None, t: Thresholds) -> Signal:
    kind = SignalKind.ONE_TURN_ABANDONMENT
    share = v.one_turn_share
    if v.sessions_ended < t.min_sessions or share is None:
        summary = f"only {v.sessions_ended} finished sessions (< {t.min_sessions})"
        return Signal(kind, False, summary, judged=False)
    before = prev.one_turn_share if prev else None
    test = (
        two_proportion_test(
            prev.one_turn_sessions, prev.sessions_ended, v.one_turn_sessions, v.sessions_ended
        )
        if prev is not None and prev.sessions_ended >= t.min_sessions
        else None
    )
    rising = test is not None and test.difference > 0 and test.p_value < t.alpha
    fired = share > t.max_one_turn_share or rising
    text_ = f"{_pct(share)} of {v.sessions_ended} sessions ended after one turn" + (
        f" (previous period {_pct(before)})" if before is not None else ""
    )
    evidence = {
        "share": share,
        "sessions": v.sessions_ended,
        "previous_share": before,
        "p_value": test.p_value if test else None,
    }
    return Signal(kind, fired, text_, evidence)
