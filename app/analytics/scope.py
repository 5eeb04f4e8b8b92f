"""What an analytics query looks at: a time range and optional alias, model and worker."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from app.analytics.traffic import DEFAULT_CLASSES, TrafficClass

# date_bin's origin: any fixed instant aligned to whole hours and days (UTC).
BIN_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Scope:
    """A half-open time range [start, end) and optional filters, all bound as parameters."""

    start: datetime
    end: datetime
    alias: str | None = None
    model_id: int | None = None
    worker_id: int | None = None
    # The traffic classes counted: live users only unless asked for more.
    classes: tuple[TrafficClass, ...] = DEFAULT_CLASSES

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("scope times must be timezone-aware")
        if self.end <= self.start:
            raise ValueError("scope end must be after its start")

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    def previous(self) -> Scope:
        """The period of the same length just before this one, same filters."""
        return replace(self, start=self.start - self.span, end=self.start)

    def params(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "alias": self.alias,
            "model_id": self.model_id,
            "worker_id": self.worker_id,
            "classes": [c.value for c in self.classes],
        }


@dataclass(frozen=True)
class RangePreset:
    """A range ending now that the page, `herd metrics` and the admin API all offer."""

    key: str  # as typed: --range 24h, ?range=24h
    label: str  # as shown on the page
    span: timedelta


RANGE_PRESETS: tuple[RangePreset, ...] = (
    RangePreset("1h", "Last hour", timedelta(hours=1)),
    RangePreset("6h", "Last 6 hours", timedelta(hours=6)),
    RangePreset("24h", "Last day", timedelta(days=1)),
    RangePreset("3d", "Last 3 days", timedelta(days=3)),
    RangePreset("7d", "Last week", timedelta(days=7)),
    RangePreset("30d", "Last 30 days", timedelta(days=30)),
)


class UnknownRange(ValueError):
    """A range name that is none of RANGE_PRESETS."""


def range_preset(key: str) -> RangePreset:
    for preset in RANGE_PRESETS:
        if preset.key == key:
            return preset
    known = ", ".join(p.key for p in RANGE_PRESETS)
    raise UnknownRange(f"unknown range {key!r} (known: {known})")


def last(span: timedelta, now: datetime | None = None, **filters: Any) -> Scope:
    """The scope ending now and spanning span."""
    end = now or datetime.now(UTC)
    return Scope(start=end - span, end=end, **filters)


def chart_bin(span: timedelta) -> timedelta:
    """The time bucket of a chart over span: about 50-200 points whatever the range."""
    for limit, size in (
        (timedelta(hours=2), timedelta(minutes=1)),
        (timedelta(hours=8), timedelta(minutes=5)),
        (timedelta(days=2), timedelta(hours=1)),
        (timedelta(days=10), timedelta(hours=3)),
        (timedelta(days=40), timedelta(hours=12)),
    ):
        if span <= limit:
            return size
    return timedelta(days=1)


def uses_rollups(span: timedelta) -> bool:
    """Ranges charted in whole hours read the hourly rollups; shorter ones the raw rows."""
    return chart_bin(span) >= HOUR


# The optional filters every query shares; NULL parameters disable them. Both `requests`
# and the rollups have these columns (the rollups store '' / 0 for NULL, which no filter
# value matches), and both keep the traffic class (revision 0019).
RAW_FILTERS = """
  AND (CAST(:alias AS text) IS NULL OR alias = :alias)
  AND (CAST(:model_id AS bigint) IS NULL OR model_id = :model_id)
  AND (CAST(:worker_id AS bigint) IS NULL OR worker_id = :worker_id)
  AND traffic_class = ANY(CAST(:classes AS text[]))
"""

# The first and last whole hour of [start, end): start rounded up, end rounded down (UTC).
# Whole hours read the rollups, the partial hours at either end the raw rows, so counts are
# those of the exact range.
FIRST_HOUR = (
    "date_trunc('hour', CAST(:start AS timestamptz) - interval '1 microsecond', 'UTC')"
    " + interval '1 hour'"
)
END_HOUR = "date_trunc('hour', CAST(:end AS timestamptz), 'UTC')"
WHOLE_HOURS = f"hour >= {FIRST_HOUR} AND hour < {END_HOUR}"
EDGE_ROWS = (
    f"created_at >= :start AND created_at < :end "
    f"AND (created_at < {FIRST_HOUR} OR created_at >= {END_HOUR})"
)
