"""What an analytics query looks at: a time range and optional alias, model and worker."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

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
    # Batch lines (requests.batch_id set) are left out unless asked for: they are no users.
    include_batch: bool = False

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
            "include_batch": self.include_batch,
        }


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


# The optional filters every query shares; NULL parameters disable them. The raw form
# filters `requests` (nullable columns), the rollup form the rollups ('' / 0 for NULL).
RAW_FILTERS = """
  AND (CAST(:alias AS text) IS NULL OR alias = :alias)
  AND (CAST(:model_id AS bigint) IS NULL OR model_id = :model_id)
  AND (CAST(:worker_id AS bigint) IS NULL OR worker_id = :worker_id)
"""
ROLLUP_FILTERS = RAW_FILTERS

# Raw rows of `requests`: batch lines only when the scope includes them.
BATCH_FILTER = "AND (CAST(:include_batch AS boolean) OR batch_id IS NULL)"
# The rollups count batch lines apart (`batch_requests`, revision 0016): the request count
# of a rollup query, without them unless the scope includes them. Latency histograms and
# error counts of the rollups include batch lines.
ROLLUP_REQUESTS = (
    "(sum(requests) - CASE WHEN CAST(:include_batch AS boolean) THEN 0 "
    "ELSE sum(batch_requests) END)"
)
