"""The Monitoring page's series: latency, traffic, engagement and sessions over time.

Ranges charted in whole hours read the rollups kept by triggers (revision 0005), so a week
over tens of millions of requests costs a few thousand rollup rows; shorter ranges read the
raw rows with exact percentile_cont, which the created_at index keeps cheap.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, text

from app.analytics.queries import fetch_rows, ratio
from app.analytics.scope import (
    BATCH_FILTER,
    BIN_ORIGIN,
    HOUR,
    RAW_FILTERS,
    ROLLUP_REQUESTS,
    Scope,
    chart_bin,
    uses_rollups,
)
from app.analytics.session_counts import SESSION_COUNTS
from app.analytics.stats import wilson_interval

QUANTILES = (0.5, 0.95, 0.99)

RAW_LATENCY_SQL = text(
    f"""
    SELECT s.*, m.name AS model
    FROM (
      SELECT date_bin(CAST(:bin AS interval), created_at, :origin) AS t, model_id,
             count(*) AS requests,
             percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ttft_ms) AS ttft,
             percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY total_ms) AS total
      FROM requests
      WHERE created_at >= :start AND created_at < :end {RAW_FILTERS} {BATCH_FILTER}
      GROUP BY 1, 2
    ) s LEFT JOIN models m ON m.id = s.model_id
    ORDER BY s.t, m.name
    """
)

ROLLUP_LATENCY_SQL = text(
    f"""
    WITH b AS (
      SELECT date_bin(CAST(:bin AS interval), hour, :origin) AS t, model_id, metric, bin,
             sum(n)::bigint AS n
      FROM latency_hourly
      WHERE hour >= date_trunc('hour', CAST(:start AS timestamptz), 'UTC') AND hour < :end
        AND metric IN ('ttft', 'total') {RAW_FILTERS}
      GROUP BY 1, 2, 3, 4
    ), q AS (
      SELECT t, model_id, metric, sum(n) AS n,
             herd_hist_quantiles(array_agg(bin ORDER BY bin), array_agg(n ORDER BY bin),
                                 ARRAY[0.5, 0.95, 0.99]) AS q
      FROM b GROUP BY 1, 2, 3
    )
    SELECT q.t, nullif(q.model_id, 0) AS model_id, m.name AS model,
           max(q.n) FILTER (WHERE q.metric = 'total') AS requests,
           ARRAY[max(q.q[1]) FILTER (WHERE q.metric = 'ttft'),
                 max(q.q[2]) FILTER (WHERE q.metric = 'ttft'),
                 max(q.q[3]) FILTER (WHERE q.metric = 'ttft')] AS ttft,
           ARRAY[max(q.q[1]) FILTER (WHERE q.metric = 'total'),
                 max(q.q[2]) FILTER (WHERE q.metric = 'total'),
                 max(q.q[3]) FILTER (WHERE q.metric = 'total')] AS total
    FROM q LEFT JOIN models m ON m.id = q.model_id
    GROUP BY 1, 2, 3
    ORDER BY 1, 3
    """
)

RAW_TRAFFIC_SQL = text(
    f"""
    SELECT s.*, m.name AS model
    FROM (
      SELECT date_bin(CAST(:bin AS interval), created_at, :origin) AS t, model_id,
             count(*) AS requests,
             count(*) FILTER (WHERE herd_is_error(status, http_status)) AS errors,
             count(*) FILTER (WHERE herd_is_client_error(status, http_status))
               AS client_errors,
             count(*) FILTER (WHERE cache_hit) AS cache_hits,
             avg(tokens_per_second) AS tokens_per_second,
             avg(queue_ms) AS queue_avg_ms,
             percentile_cont(0.95) WITHIN GROUP (ORDER BY queue_ms) AS queue_p95_ms,
             sum(completion_tokens) AS completion_tokens
      FROM requests
      WHERE created_at >= :start AND created_at < :end {RAW_FILTERS} {BATCH_FILTER}
      GROUP BY 1, 2
    ) s LEFT JOIN models m ON m.id = s.model_id
    ORDER BY s.t, m.name
    """
)

ROLLUP_TRAFFIC_SQL = text(
    f"""
    WITH h AS (
      SELECT date_bin(CAST(:bin AS interval), hour, :origin) AS t, model_id,
             {ROLLUP_REQUESTS} AS requests, sum(errors) AS errors,
             sum(cache_hits) AS cache_hits,
             sum(tps_sum) / nullif(sum(tps_n), 0) AS tokens_per_second,
             sum(queue_sum_ms) / nullif(sum(queue_n), 0) AS queue_avg_ms,
             sum(completion_tokens) AS completion_tokens
      FROM requests_hourly
      WHERE hour >= date_trunc('hour', CAST(:start AS timestamptz), 'UTC') AND hour < :end
        {RAW_FILTERS}
      GROUP BY 1, 2
    ), q AS (
      SELECT t, model_id,
             (herd_hist_quantiles(array_agg(bin ORDER BY bin), array_agg(n ORDER BY bin),
                                  ARRAY[0.95]))[1] AS queue_p95_ms
      FROM (
        SELECT date_bin(CAST(:bin AS interval), hour, :origin) AS t, model_id, bin,
               sum(n)::bigint AS n
        FROM latency_hourly
        WHERE hour >= date_trunc('hour', CAST(:start AS timestamptz), 'UTC') AND hour < :end
          AND metric = 'queue' {RAW_FILTERS}
        GROUP BY 1, 2, 3
      ) b
      GROUP BY 1, 2
    ), c AS (
      -- 4xx answers are not in the rollups; the partial index finds the few there are.
      SELECT date_bin(CAST(:bin AS interval), created_at, :origin) AS t,
             coalesce(model_id, 0) AS model_id, count(*) AS client_errors
      FROM requests
      WHERE created_at >= :start AND created_at < :end AND http_status BETWEEN 400 AND 499
        AND herd_is_client_error(status, http_status) {RAW_FILTERS} {BATCH_FILTER}
      GROUP BY 1, 2
    )
    SELECT h.t, nullif(h.model_id, 0) AS model_id, m.name AS model, h.requests, h.errors,
           coalesce(c.client_errors, 0) AS client_errors,
           h.cache_hits, h.tokens_per_second, h.queue_avg_ms, q.queue_p95_ms,
           h.completion_tokens
    FROM h
    LEFT JOIN q ON q.t = h.t AND q.model_id = h.model_id
    LEFT JOIN c ON c.t = h.t AND c.model_id = h.model_id
    LEFT JOIN models m ON m.id = h.model_id
    WHERE h.requests > 0
    ORDER BY 1, 3
    """
)

ENGAGEMENT_SQL = text(
    f"""
    SELECT s.*, m.name AS model
    FROM (
      SELECT date_bin(CAST(:bin AS interval), hour, :origin) AS t,
             nullif(model_id, 0) AS model_id,
             {ROLLUP_REQUESTS} AS responses, sum(ratings) AS ratings,
             sum(thumbs_up) AS thumbs_up, sum(comments) AS comments
      FROM requests_hourly
      WHERE hour >= date_trunc('hour', CAST(:start AS timestamptz), 'UTC') AND hour < :end
        {RAW_FILTERS}
      GROUP BY 1, 2
    ) s LEFT JOIN models m ON m.id = s.model_id
    ORDER BY s.t, m.name
    """
)

# Sessions count where they started; "abandoned after one turn" needs the session to be
# over, i.e. quiet for :idle (a chat still going is not abandoned yet).
SESSIONS_SQL = text(
    f"""
    SELECT s.*, m.name AS model
    FROM (
      SELECT date_bin(CAST(:bin AS interval), hour, :origin) AS t,
             nullif(model_id, 0) AS model_id,
             sum(sessions) AS sessions, sum(turns) AS turns, sum(regenerates) AS regenerates,
             sum(ended) AS ended, sum(one_turn) AS one_turn
      FROM ({SESSION_COUNTS}) c
      GROUP BY 1, 2
      HAVING sum(sessions) > 0
    ) s LEFT JOIN models m ON m.id = s.model_id
    ORDER BY s.t, m.name
    """
)

SESSION_IDLE = timedelta(minutes=30)


def _params(scope: Scope, bin_size: timedelta) -> dict[str, Any]:
    return {**scope.params(), "bin": bin_size, "origin": BIN_ORIGIN}


def engagement_bin(span: timedelta) -> timedelta:
    """Ratings are sparse: chart them per hour up to two days, per day beyond."""
    return HOUR if span <= timedelta(days=2) else timedelta(days=1)


def latency_series(engine: Engine, scope: Scope) -> list[dict[str, Any]]:
    """TTFT and total latency p50/p95/p99 (ms) per time bucket and model."""
    bin_size = chart_bin(scope.span)
    sql = ROLLUP_LATENCY_SQL if uses_rollups(scope.span) else RAW_LATENCY_SQL
    rows = fetch_rows(engine, sql, _params(scope, bin_size))
    for row in rows:
        for metric in ("ttft", "total"):
            values = row.pop(metric) or [None] * len(QUANTILES)
            for q, value in zip(QUANTILES, values, strict=True):
                row[f"{metric}_p{round(q * 100)}_ms"] = value
    return rows


def traffic_series(engine: Engine, scope: Scope) -> list[dict[str, Any]]:
    """Requests per minute, server and client error rates, cache-hit rate, tokens/s and
    queue wait per bucket."""
    bin_size = chart_bin(scope.span)
    sql = ROLLUP_TRAFFIC_SQL if uses_rollups(scope.span) else RAW_TRAFFIC_SQL
    rows = fetch_rows(engine, sql, _params(scope, bin_size))
    minutes = bin_size.total_seconds() / 60
    for row in rows:
        row["requests_per_minute"] = row["requests"] / minutes
        row["error_rate"] = ratio(row["errors"], row["requests"])
        row["client_error_rate"] = ratio(row["client_errors"], row["requests"])
        row["cache_hit_rate"] = ratio(row["cache_hits"], row["requests"])
    return rows


def engagement_series(engine: Engine, scope: Scope) -> list[dict[str, Any]]:
    """Feedback rate and thumbs-up ratio with its 95 % Wilson band, and comments."""
    rows = fetch_rows(engine, ENGAGEMENT_SQL, _params(scope, engagement_bin(scope.span)))
    for row in rows:
        low, high = wilson_interval(int(row["thumbs_up"]), int(row["ratings"]))
        row["feedback_rate"] = ratio(row["ratings"], row["responses"])
        row["thumbs_up_ratio"] = ratio(row["thumbs_up"], row["ratings"])
        row["thumbs_up_low"] = low if row["ratings"] else None
        row["thumbs_up_high"] = high if row["ratings"] else None
    return [row for row in rows if row["responses"] or row["ratings"]]


def session_series(engine: Engine, scope: Scope) -> list[dict[str, Any]]:
    """Sessions started, turns per session, regenerate rate (resent turns per turn) and the
    share of finished sessions abandoned after one turn."""
    params = {**_params(scope, engagement_bin(scope.span)), "idle": SESSION_IDLE}
    rows = fetch_rows(engine, SESSIONS_SQL, params)
    for row in rows:
        row["turns_per_session"] = ratio(row["turns"], row["sessions"])
        row["one_turn_share"] = ratio(row["one_turn"], row["ended"])
        row["regenerate_rate"] = ratio(row["regenerates"], row["turns"])
    return rows
