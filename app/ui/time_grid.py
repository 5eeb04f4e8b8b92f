"""The time bins a chart's x axis spans, so a bin without rows shows as a gap, not a line."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from app.analytics.monitoring import engagement_bin
from app.analytics.scope import BIN_ORIGIN, Scope, chart_bin

# Past this many bins a chart is not filled (a custom range of years in minutes): its points
# are drawn as they come rather than building a grid nobody could read.
MAX_BINS = 5000


@dataclass(frozen=True)
class TimeGrid:
    """Bins of `step` from the one holding `start` up to `end`, aligned on `origin` as
    SQL's date_bin aligns them, so the rows' `t` values fall on the grid."""

    start: datetime
    end: datetime
    step: timedelta
    origin: datetime = BIN_ORIGIN

    @classmethod
    def of(cls, scope: Scope, step: timedelta) -> TimeGrid:
        """The grid of a query over scope binned by step."""
        return cls(scope.start, scope.end, step)

    @property
    def first(self) -> datetime:
        """The start of the bin holding start."""
        return self.origin + (self.start - self.origin) // self.step * self.step

    def times(self) -> list[datetime]:
        """Every bin start in [first, end); empty when there would be more than MAX_BINS."""
        if (self.end - self.first) / self.step > MAX_BINS:
            return []
        out, t = [], self.first
        while t < self.end:
            out.append(t)
            t += self.step
        return out


def implied_grid(times: Iterable[Any]) -> TimeGrid | None:
    """The grid rows without a known bin size lie on: the smallest distance between two of
    their times as the step, from the first to the last; None for fewer than two times."""
    distinct = sorted({t for t in times if isinstance(t, datetime)})
    steps = [b - a for a, b in pairwise(distinct)]
    if not steps:
        return None
    step = min(steps)
    if any(s % step for s in steps):  # not all on one grid: draw the points as they are
        return None
    return TimeGrid(distinct[0], distinct[-1] + step, step, origin=distinct[0])


def on_grid(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    grid: TimeGrid | None,
    missing: float | None = None,
) -> tuple[list[Any], dict[str, list[Any]]]:
    """x (bin starts) and, per column, y values over the grid; a bin without a row reads
    `missing` (None: a gap in the line). Rows off the grid keep their own place."""
    by_time = {row["t"]: row for row in rows}
    times = set(grid.times()) if grid else set()
    x = sorted(times | set(by_time))
    values = {
        column: [by_time[t].get(column) if t in by_time else missing for t in x]
        for column in columns
    }
    return x, values


def series_grid(scope: Scope) -> TimeGrid:
    """The bins of the latency and traffic series over scope."""
    return TimeGrid.of(scope, chart_bin(scope.span))


def engagement_grid(scope: Scope) -> TimeGrid:
    """The bins of the engagement and session series over scope."""
    return TimeGrid.of(scope, engagement_bin(scope.span))


def last_minutes(minutes: int, now: datetime | None = None) -> TimeGrid:
    """The per-minute bins of the last `minutes` minutes (UTC)."""
    end = now or datetime.now(UTC)
    return TimeGrid(end - timedelta(minutes=minutes), end, timedelta(minutes=1))
