"""The numbers an operator scans first: one summary per period, and tiles comparing the
period with the one before it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from app.analytics.queries import fetch_one, ratio
from app.analytics.scope import BATCH_FILTER, RAW_FILTERS, ROLLUP_REQUESTS, Scope, uses_rollups

RAW_SUMMARY_SQL = text(
    f"""
    SELECT count(*) AS requests,
           count(*) FILTER (WHERE herd_is_error(r.status, r.http_status)) AS errors,
           count(*) FILTER (WHERE herd_is_client_error(r.status, r.http_status)) AS client_errors,
           count(*) FILTER (WHERE r.cache_hit) AS cache_hits,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY r.ttft_ms) AS ttft_p95_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY r.total_ms) AS total_p95_ms,
           avg(r.tokens_per_second) AS tokens_per_second,
           coalesce(sum(v.ratings), 0) AS ratings, coalesce(sum(v.thumbs_up), 0) AS thumbs_up
    FROM requests r
    -- An aggregate per request keeps this a probe of the feedback index for each request
    -- in range; a join lets the planner read all of feedback (0.8 s at 1M feedback rows).
    CROSS JOIN LATERAL (
      SELECT count(*) AS ratings, count(*) FILTER (WHERE f.rating = 1) AS thumbs_up
      FROM feedback f WHERE f.request_id = r.id
    ) v
    WHERE r.created_at >= :start AND r.created_at < :end {RAW_FILTERS} {BATCH_FILTER}
    """
)

ROLLUP_SUMMARY_SQL = text(
    f"""
    WITH h AS (
      SELECT coalesce({ROLLUP_REQUESTS}, 0) AS requests, coalesce(sum(errors), 0) AS errors,
             coalesce(sum(cache_hits), 0) AS cache_hits,
             sum(tps_sum) / nullif(sum(tps_n), 0) AS tokens_per_second,
             coalesce(sum(ratings), 0) AS ratings, coalesce(sum(thumbs_up), 0) AS thumbs_up
      FROM requests_hourly
      WHERE hour >= date_trunc('hour', CAST(:start AS timestamptz), 'UTC') AND hour < :end
        {RAW_FILTERS}
    ), l AS (
      SELECT metric, herd_hist_quantiles(array_agg(bin ORDER BY bin),
                                         array_agg(n ORDER BY bin), ARRAY[0.95]) AS q
      FROM (
        SELECT metric, bin, sum(n)::bigint AS n FROM latency_hourly
        WHERE hour >= date_trunc('hour', CAST(:start AS timestamptz), 'UTC') AND hour < :end
          AND metric IN ('ttft', 'total') {RAW_FILTERS}
        GROUP BY 1, 2
      ) b GROUP BY 1
    )
    SELECT h.*,
           -- 4xx answers are not in the rollups; the partial index finds the few there are.
           (SELECT count(*) FROM requests
            WHERE created_at >= :start AND created_at < :end
              AND http_status BETWEEN 400 AND 499
              AND herd_is_client_error(status, http_status) {RAW_FILTERS}
              {BATCH_FILTER}) AS client_errors,
           (SELECT q[1] FROM l WHERE metric = 'ttft') AS ttft_p95_ms,
           (SELECT q[1] FROM l WHERE metric = 'total') AS total_p95_ms
    FROM h
    """
)


@dataclass(frozen=True)
class Summary:
    """Totals and headline rates of one period."""

    requests: int
    # Server-side failures (5xx, a stream cut); client_errors are 4xx answers.
    errors: int
    client_errors: int
    cache_hits: int
    ttft_p95_ms: float | None
    total_p95_ms: float | None
    tokens_per_second: float | None
    ratings: int
    thumbs_up: int

    @property
    def error_rate(self) -> float | None:
        return ratio(self.errors, self.requests)

    @property
    def client_error_rate(self) -> float | None:
        return ratio(self.client_errors, self.requests)

    @property
    def cache_hit_rate(self) -> float | None:
        return ratio(self.cache_hits, self.requests)

    @property
    def feedback_rate(self) -> float | None:
        return ratio(self.ratings, self.requests)

    @property
    def thumbs_up_ratio(self) -> float | None:
        return ratio(self.thumbs_up, self.ratings)


def summary(engine: Engine, scope: Scope) -> Summary:
    """The period's summary, from the rollups for long ranges, raw rows for short ones."""
    sql = ROLLUP_SUMMARY_SQL if uses_rollups(scope.span) else RAW_SUMMARY_SQL
    row = fetch_one(engine, sql, scope.params())
    return Summary(
        requests=int(row["requests"]),
        errors=int(row["errors"]),
        client_errors=int(row["client_errors"]),
        cache_hits=int(row["cache_hits"]),
        ttft_p95_ms=_float(row["ttft_p95_ms"]),
        total_p95_ms=_float(row["total_p95_ms"]),
        tokens_per_second=_float(row["tokens_per_second"]),
        ratings=int(row["ratings"]),
        thumbs_up=int(row["thumbs_up"]),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Tile:
    """One metric tile: this period's value, the previous period's, and which way is good."""

    label: str
    value: float | None
    previous: float | None
    unit: str  # "count", "ms", "rate" (0..1) or "per_s"
    higher_is_better: bool
    help: str

    @property
    def change(self) -> float | None:
        if self.value is None or self.previous is None:
            return None
        return self.value - self.previous


def tiles(engine: Engine, scope: Scope) -> list[Tile]:
    """Headline tiles for scope, each with its value over the previous period."""
    now, before = summary(engine, scope), summary(engine, scope.previous())
    return [
        Tile("Requests", now.requests, before.requests, "count", True, "Calls in the period"),
        Tile("p95 TTFT", now.ttft_p95_ms, before.ttft_p95_ms, "ms", False, "Time to first token"),
        Tile("p95 latency", now.total_p95_ms, before.total_p95_ms, "ms", False, "Whole call"),
        Tile(
            "Tokens/s",
            now.tokens_per_second,
            before.tokens_per_second,
            "per_s",
            True,
            "Mean generation speed per request",
        ),
        Tile(
            "Server errors",
            now.error_rate,
            before.error_rate,
            "rate",
            False,
            "Share of calls that failed on Herd's side (5xx, a stream cut off)",
        ),
        Tile(
            "Client errors",
            now.client_error_rate,
            before.client_error_rate,
            "rate",
            False,
            "Share of calls refused as the client's mistake (4xx: unknown alias, bad "
            "parameter, rate limit)",
        ),
        Tile(
            "Thumbs up",
            now.thumbs_up_ratio,
            before.thumbs_up_ratio,
            "rate",
            True,
            f"Share of {now.ratings} ratings that are positive",
        ),
        Tile(
            "Feedback rate",
            now.feedback_rate,
            before.feedback_rate,
            "rate",
            True,
            "Ratings per response",
        ),
    ]
