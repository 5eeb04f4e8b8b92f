"""The Monitoring page's series: latency, traffic, engagement and sessions over time.

Every number comes from the metric catalog (app/analytics/catalog.py), binned: ranges
charted in whole hours read the rollups (a week over tens of millions of requests costs a
few thousand rollup rows) and the raw rows of their partial end hours; shorter ranges read
raw rows put into the same latency histogram bins, so a chart and its tile agree.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, text

from app.analytics.catalog import totals, values
from app.analytics.queries import fetch_rows, ratio
from app.analytics.scope import BIN_ORIGIN, HOUR, Scope, chart_bin
from app.analytics.session_counts import SESSION_COUNTS
from app.analytics.stats import wilson_interval

MODEL_NAMES_SQL = text("SELECT id, name FROM models WHERE id = ANY(CAST(:ids AS bigint[]))")


def _model_names(engine: Engine, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = fetch_rows(engine, MODEL_NAMES_SQL, {"ids": sorted(ids)})
    return {int(r["id"]): str(r["name"]) for r in rows}


def catalog_series(engine: Engine, scope: Scope, bin_size: timedelta) -> list[dict[str, Any]]:
    """Every catalog metric and measure per time bin and model: the rows every chart of
    the page draws, computed as the tiles are (one definition of each number)."""
    found = totals(engine, scope, bin_size=bin_size, by=("model_id",))
    names = _model_names(engine, {t.model_id for t in found if t.model_id is not None})
    rows = []
    for item in found:
        row: dict[str, Any] = {
            "t": item.t,
            "model_id": item.model_id,
            "model": None if item.model_id is None else names.get(item.model_id),
            **item.counts,
            **values(item),
        }
        rows.append(row)
    rows.sort(key=lambda r: (r["t"], r["model"] or ""))
    return rows


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


def chart_series(engine: Engine, scope: Scope) -> list[dict[str, Any]]:
    """Per chart bin and model: latency percentiles, requests per minute, server and client
    error rates, cache-hit rate, tokens/s and queue wait (bins with calls only)."""
    return [r for r in catalog_series(engine, scope, chart_bin(scope.span)) if r["requests"]]


# The latency and the traffic charts draw the same rows.
latency_series = traffic_series = chart_series


def engagement_series(engine: Engine, scope: Scope) -> list[dict[str, Any]]:
    """Feedback rate and thumbs-up ratio with its 95 % Wilson band, and comments."""
    rows = catalog_series(engine, scope, engagement_bin(scope.span))
    for row in rows:
        row["responses"] = row["requests"]
        low, high = wilson_interval(int(row["thumbs_up"]), int(row["ratings"]))
        row["thumbs_up_low"] = low if row["ratings"] else None
        row["thumbs_up_high"] = high if row["ratings"] else None
    return rows


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
