"""The metric catalog: every number a tile, chart, signal, API or CLI shows, defined once.

A metric is computed from *measures* (additive counts and sums, each with its SQL over raw
`requests` rows and its form over the `requests_hourly` rollup) and from the *latency
histograms* (`latency_hourly`, or raw rows put into the same bins). A range reads the
rollups for its whole hours and the raw rows for the partial hours at either end, so a
count is that of the exact range, and a percentile is the histogram's: within one bin
(about 9 %) of the nearest-rank percentile of the raw rows (`percentile_disc`), at every
range and for every choice of traffic classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, text

from app.analytics.queries import fetch_rows, ratio
from app.analytics.scope import (
    BIN_ORIGIN,
    EDGE_ROWS,
    HOUR,
    RAW_FILTERS,
    WHOLE_HOURS,
    Scope,
)
from app.analytics.traffic import TrafficClass


class Unit(StrEnum):
    COUNT = "count"
    MS = "ms"
    RATE = "rate"  # a share, 0..1
    PER_S = "per_s"
    PER_MIN = "per_min"


@dataclass(frozen=True)
class Measure:
    """An additive quantity: an aggregate over raw request rows (feedback counts come from
    the per-request lateral `v`) and the same over the hourly rollup."""

    name: str
    raw: str
    rollup: str


MEASURES: tuple[Measure, ...] = (
    Measure("requests", "count(*)", "sum(requests)"),
    Measure(
        "errors",
        "count(*) FILTER (WHERE herd_is_error(status, http_status))",
        "sum(errors)",
    ),
    Measure(
        "client_errors",
        "count(*) FILTER (WHERE herd_is_client_error(status, http_status))",
        "sum(client_errors)",
    ),
    Measure("cache_hits", "count(*) FILTER (WHERE cache_hit)", "sum(cache_hits)"),
    Measure("prompt_tokens", "coalesce(sum(prompt_tokens), 0)", "sum(prompt_tokens)"),
    Measure("completion_tokens", "coalesce(sum(completion_tokens), 0)", "sum(completion_tokens)"),
    Measure("tps_sum", "coalesce(sum(tokens_per_second), 0)", "sum(tps_sum)"),
    Measure("tps_n", "count(tokens_per_second)", "sum(tps_n)"),
    Measure("queue_sum_ms", "coalesce(sum(queue_ms), 0)", "sum(queue_sum_ms)"),
    Measure("queue_n", "count(queue_ms)", "sum(queue_n)"),
    Measure("ratings", "coalesce(sum(v.ratings), 0)", "sum(ratings)"),
    Measure("thumbs_up", "coalesce(sum(v.thumbs_up), 0)", "sum(thumbs_up)"),
    Measure("comments", "coalesce(sum(v.comments), 0)", "sum(comments)"),
)

# The latency histograms (metric name in latency_hourly -> column of requests) and the
# quantiles read from each.
HISTOGRAMS = {"ttft": "ttft_ms", "total": "total_ms", "queue": "queue_ms"}
QUANTILES = (0.5, 0.95, 0.99)

# Dimensions a query can be grouped by, as stored in the rollups ('' / 0 for NULL).
GROUPS = {
    "alias": "coalesce(alias, '')",
    "model_id": "coalesce(model_id, 0)",
    "traffic_class": "traffic_class",
}


@dataclass
class Totals:
    """The measures and latency quantiles of one range, or one bin of it, for one group."""

    minutes: float
    t: datetime | None = None
    alias: str | None = None
    model_id: int | None = None
    traffic_class: str | None = None
    counts: dict[str, float] = field(default_factory=dict)
    quantiles: dict[str, list[float | None]] = field(default_factory=dict)

    def count(self, name: str) -> float:
        return self.counts.get(name, 0)

    def quantile(self, histogram: str, q: float) -> float | None:
        values = self.quantiles.get(histogram)
        return None if values is None else values[QUANTILES.index(q)]


@dataclass(frozen=True)
class Metric:
    """One number: its name (API, CLI, CSV), label (tiles, axes), unit, which way is good,
    help text, and how it follows from a range's Totals."""

    name: str
    label: str
    unit: Unit
    higher_is_better: bool
    help: str
    value: Callable[[Totals], float | None]
    # Shown as a tile on Monitoring (and by `herd metrics` without --all).
    tile: bool = False


def _count(name: str) -> Callable[[Totals], float | None]:
    return lambda t: t.count(name)


def _share(numerator: str, denominator: str) -> Callable[[Totals], float | None]:
    return lambda t: ratio(t.count(numerator), t.count(denominator))


def _quantile(histogram: str, q: float) -> Callable[[Totals], float | None]:
    return lambda t: t.quantile(histogram, q)


def _percentiles(histogram: str, what: str, tile_q: float | None) -> list[Metric]:
    return [
        Metric(
            f"{histogram}_p{round(q * 100)}_ms",
            f"p{round(q * 100)} {what}",
            Unit.MS,
            False,
            f"{round(q * 100)} % of calls took at most this long ({what}; "
            "from a histogram of 8 bins per doubling)",
            _quantile(histogram, q),
            tile=q == tile_q,
        )
        for q in QUANTILES
    ]


CATALOG: tuple[Metric, ...] = (
    Metric(
        "requests",
        "Requests",
        Unit.COUNT,
        True,
        "Calls in the period",
        _count("requests"),
        tile=True,
    ),
    Metric(
        "requests_per_minute",
        "Requests/min",
        Unit.PER_MIN,
        True,
        "Calls per minute",
        lambda t: t.count("requests") / t.minutes if t.minutes else None,
    ),
    *_percentiles("ttft", "TTFT", 0.95),
    *_percentiles("total", "latency", 0.95),
    Metric(
        "tokens_per_second",
        "Tokens/s",
        Unit.PER_S,
        True,
        "Mean generation speed per request",
        _share("tps_sum", "tps_n"),
        tile=True,
    ),
    Metric(
        "error_rate",
        "Server errors",
        Unit.RATE,
        False,
        "Share of calls that failed on Herd's side (5xx, a stream cut off)",
        _share("errors", "requests"),
        tile=True,
    ),
    Metric(
        "client_error_rate",
        "Client errors",
        Unit.RATE,
        False,
        "Share of calls refused as the client's mistake (4xx: unknown alias, bad parameter, "
        "rate limit)",
        _share("client_errors", "requests"),
        tile=True,
    ),
    Metric(
        "thumbs_up_ratio",
        "Thumbs up",
        Unit.RATE,
        True,
        "Share of ratings that are positive",
        _share("thumbs_up", "ratings"),
        tile=True,
    ),
    Metric(
        "feedback_rate",
        "Feedback rate",
        Unit.RATE,
        True,
        "Ratings per response",
        _share("ratings", "requests"),
        tile=True,
    ),
    Metric(
        "errors",
        "Server errors (calls)",
        Unit.COUNT,
        False,
        "Calls that failed on Herd's side",
        _count("errors"),
    ),
    Metric(
        "client_errors",
        "Client errors (calls)",
        Unit.COUNT,
        False,
        "4xx answers",
        _count("client_errors"),
    ),
    Metric(
        "cache_hit_rate",
        "Cache hits",
        Unit.RATE,
        True,
        "Share of calls answered from the response or semantic cache",
        _share("cache_hits", "requests"),
    ),
    Metric(
        "queue_avg_ms",
        "Mean queue wait",
        Unit.MS,
        False,
        "Mean time a call waited for a worker slot",
        _share("queue_sum_ms", "queue_n"),
    ),
    *[m for m in _percentiles("queue", "queue wait", None) if m.name == "queue_p95_ms"],
    Metric(
        "prompt_tokens", "Prompt tokens", Unit.COUNT, True, "Tokens read", _count("prompt_tokens")
    ),
    Metric(
        "completion_tokens",
        "Completion tokens",
        Unit.COUNT,
        True,
        "Tokens generated",
        _count("completion_tokens"),
    ),
    Metric("ratings", "Ratings", Unit.COUNT, True, "Thumbs up and down given", _count("ratings")),
    Metric(
        "thumbs_up", "Thumbs up (count)", Unit.COUNT, True, "Positive ratings", _count("thumbs_up")
    ),
    Metric("comments", "Comments", Unit.COUNT, True, "Ratings with a comment", _count("comments")),
)

METRICS: dict[str, Metric] = {m.name: m for m in CATALOG}
TILES: tuple[Metric, ...] = tuple(m for m in CATALOG if m.tile)


class UnknownMetric(ValueError):
    """A metric name the catalog does not define."""


def metric(name: str) -> Metric:
    """The catalog entry called name; UnknownMetric naming it otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise UnknownMetric(f"unknown metric {name!r} (known: {', '.join(METRICS)})") from None


# --- reading a range -------------------------------------------------------------------

FEEDBACK_PER_REQUEST = """
    CROSS JOIN LATERAL (
      SELECT count(*) AS ratings, count(*) FILTER (WHERE f.rating = 1) AS thumbs_up,
             count(*) FILTER (WHERE coalesce(f.comment, '') <> '') AS comments
      FROM feedback f WHERE f.request_id = r.id
    ) v
"""


def _shape(bin_size: timedelta | None, by: Sequence[str]) -> tuple[str, str, str, str]:
    """(time expression over rollups, over raw rows, group columns, GROUP BY list)."""
    for name in by:
        if name not in GROUPS:
            raise ValueError(f"cannot group metrics by {name!r}")
    if bin_size is None:
        t_hourly = t_raw = "CAST(NULL AS timestamptz)"
    else:
        t_hourly = "date_bin(CAST(:bin AS interval), hour, :origin)"
        t_raw = "date_bin(CAST(:bin AS interval), created_at, :origin)"
    groups = "".join(f", {GROUPS[name]} AS {name}" for name in by)
    group_by = ", ".join(str(i) for i in range(1, len(by) + 2))
    return t_hourly, t_raw, groups, group_by


def _parts(hourly: str, raw: str, whole_hours: bool) -> str:
    """Rollups for the whole hours and raw rows for the rest, or raw rows for all of it."""
    if whole_hours:
        return f"{hourly} UNION ALL {raw}"
    return raw.replace(EDGE_ROWS, "created_at >= :start AND created_at < :end")


def counts_sql(bin_size: timedelta | None, by: Sequence[str]) -> str:
    t_hourly, t_raw, groups, group_by = _shape(bin_size, by)
    hourly = f"""
      SELECT {t_hourly} AS t{groups}, {", ".join(f"{m.rollup} AS {m.name}" for m in MEASURES)}
      FROM requests_hourly WHERE {WHOLE_HOURS} {RAW_FILTERS}
      GROUP BY {group_by}
    """
    raw = f"""
      SELECT {t_raw} AS t{groups}, {", ".join(f"{m.raw} AS {m.name}" for m in MEASURES)}
      FROM requests r {FEEDBACK_PER_REQUEST}
      WHERE {EDGE_ROWS} {RAW_FILTERS}
      GROUP BY {group_by}
    """
    sums = ", ".join(f"sum({m.name}) AS {m.name}" for m in MEASURES)
    keys = ", ".join(["t", *by])
    return f"""
      SELECT {keys}, {sums}
      FROM ({_parts(hourly, raw, _uses_rollups(bin_size))}) p
      GROUP BY {keys} HAVING sum(requests) > 0 OR sum(ratings) > 0
      ORDER BY {keys}
    """


def quantiles_sql(bin_size: timedelta | None, by: Sequence[str]) -> str:
    t_hourly, t_raw, groups, group_by = _shape(bin_size, by)
    values = ", ".join(f"('{name}', {column})" for name, column in HISTOGRAMS.items())
    hourly = f"""
      SELECT {t_hourly} AS t{groups}, metric, bin, sum(n) AS n
      FROM latency_hourly WHERE {WHOLE_HOURS} {RAW_FILTERS}
      GROUP BY {group_by}, metric, bin
    """
    raw = f"""
      SELECT {t_raw} AS t{groups}, m.metric, herd_latency_bin(m.ms) AS bin, count(*) AS n
      FROM requests r CROSS JOIN LATERAL (VALUES {values}) AS m(metric, ms)
      WHERE m.ms IS NOT NULL AND {EDGE_ROWS} {RAW_FILTERS}
      GROUP BY {group_by}, {len(by) + 2}, {len(by) + 3}
    """
    keys = ", ".join(["t", *by, "metric"])
    qs = ", ".join(str(q) for q in QUANTILES)
    return f"""
      SELECT {keys}, herd_hist_quantiles(array_agg(bin ORDER BY bin), array_agg(n ORDER BY bin),
                                         ARRAY[{qs}]) AS q
      FROM (
        SELECT {keys}, bin, sum(n)::bigint AS n
        FROM ({_parts(hourly, raw, _uses_rollups(bin_size))}) p
        GROUP BY {keys}, bin
      ) b
      GROUP BY {keys}
    """


def _uses_rollups(bin_size: timedelta | None) -> bool:
    # Bins shorter than an hour cannot come from hourly rollups.
    return bin_size is None or bin_size >= HOUR


def totals(
    engine: Engine,
    scope: Scope,
    *,
    bin_size: timedelta | None = None,
    by: Sequence[str] = (),
) -> list[Totals]:
    """The measures and quantiles of scope: one Totals for the whole range (no bin_size,
    no by), or one per time bin and group that has traffic or ratings, in time order."""
    params = {**scope.params(), "bin": bin_size, "origin": BIN_ORIGIN}
    minutes = (bin_size or scope.span).total_seconds() / 60
    found: dict[tuple[Any, ...], Totals] = {}

    def entry(row: dict[str, Any]) -> Totals:
        key = (row["t"], *(row[name] for name in by))
        if key not in found:
            found[key] = Totals(
                minutes=minutes,
                t=row["t"],
                alias=(row.get("alias") or None) if "alias" in by else scope.alias,
                model_id=(row.get("model_id") or None) if "model_id" in by else scope.model_id,
                traffic_class=row.get("traffic_class"),
            )
        return found[key]

    for row in fetch_rows(engine, text(counts_sql(bin_size, by)), params):
        entry(row).counts = {m.name: row[m.name] or 0 for m in MEASURES}
    for row in fetch_rows(engine, text(quantiles_sql(bin_size, by)), params):
        key = (row["t"], *(row[name] for name in by))
        if key in found:
            found[key].quantiles[row["metric"]] = list(row["q"])
    if not by and bin_size is None and not found:
        return [Totals(minutes=minutes, alias=scope.alias, model_id=scope.model_id)]
    return list(found.values())


def range_totals(engine: Engine, scope: Scope) -> Totals:
    """The whole range as one Totals (zeros and no quantiles when it is empty)."""
    return totals(engine, scope)[0]


def values(totals_: Totals, metrics: Sequence[Metric] = CATALOG) -> dict[str, float | None]:
    """Each metric's value for these totals, by name."""
    return {m.name: m.value(totals_) for m in metrics}


def requests_by_class(engine: Engine, scope: Scope) -> dict[TrafficClass, int]:
    """How many calls of each traffic class scope's range and filters hold, whichever
    classes scope counts (for "n batch calls not counted" notes)."""
    every = replace(scope, classes=tuple(TrafficClass))
    found = totals(engine, every, by=("traffic_class",))
    return {
        TrafficClass(t.traffic_class): int(t.count("requests")) for t in found if t.traffic_class
    }
