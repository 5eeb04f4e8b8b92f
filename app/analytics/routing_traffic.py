"""Where traffic went in the last minutes: requests, errors and cache hits per worker per
minute, for the Routing page's live view. Reads the raw rows over the created_at index."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from app.analytics.queries import fetch_rows

# Who answered: a worker (with the model it served), the response cache, or nobody (the
# gateway refused or failed before any worker took the call).
TARGET = """
  CASE WHEN r.worker_id IS NOT NULL
         THEN 'worker ' || r.worker_id || coalesce(' · ' || m.name, '')
       WHEN r.cache_hit THEN 'response cache'
       ELSE 'not routed' END
"""

PER_MINUTE_SQL = text(
    f"""
    SELECT date_trunc('minute', r.created_at) AS t, {TARGET} AS target,
           count(*) AS requests,
           count(*) FILTER (WHERE herd_is_error(r.status, r.http_status)) AS errors,
           count(*) FILTER (WHERE r.cache_hit) AS cache_hits
    FROM requests r LEFT JOIN models m ON m.id = r.model_id
    WHERE r.created_at >= now() - make_interval(mins => :minutes)
      AND (CAST(:alias AS text) IS NULL OR r.alias = :alias)
    GROUP BY 1, 2
    ORDER BY 1, 2
    """
)

TOTALS_SQL = text(
    f"""
    SELECT {TARGET} AS target, r.alias,
           count(*) AS requests,
           count(*) FILTER (WHERE herd_is_error(r.status, r.http_status)) AS errors,
           count(*) FILTER (WHERE r.cache_hit) AS cache_hits,
           round(CAST(percentile_cont(0.5) WITHIN GROUP (ORDER BY r.total_ms) AS numeric), 1)
             AS total_p50_ms
    FROM requests r LEFT JOIN models m ON m.id = r.model_id
    WHERE r.created_at >= now() - make_interval(mins => :minutes)
      AND (CAST(:alias AS text) IS NULL OR r.alias = :alias)
    GROUP BY 1, 2
    ORDER BY requests DESC, 1
    """
)


def traffic_per_minute(
    engine: Engine, minutes: int, alias: str | None = None
) -> list[dict[str, Any]]:
    """Rows of t (minute), target, requests, errors, cache_hits over the last minutes."""
    return fetch_rows(engine, PER_MINUTE_SQL, {"minutes": minutes, "alias": alias})


def traffic_totals(engine: Engine, minutes: int, alias: str | None = None) -> list[dict[str, Any]]:
    """Per target and alias over the last minutes: requests, errors, cache hits, p50 ms."""
    return fetch_rows(engine, TOTALS_SQL, {"minutes": minutes, "alias": alias})
