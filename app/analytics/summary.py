"""The numbers an operator scans first: the catalog's tile metrics for a period, each next
to its value in the period before."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from app.analytics.catalog import TILES, Metric, Totals, range_totals
from app.analytics.scope import Scope


@dataclass(frozen=True)
class Tile:
    """One metric tile: this period's value, the previous period's, and which way is good."""

    name: str
    label: str
    value: float | None
    previous: float | None
    unit: str  # a catalog Unit: "count", "ms", "rate" (0..1), "per_s", "per_min"
    higher_is_better: bool
    help: str

    @property
    def change(self) -> float | None:
        if self.value is None or self.previous is None:
            return None
        return self.value - self.previous

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": self.value,
            "previous": self.previous,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
        }


def tile(metric: Metric, now: Totals, before: Totals) -> Tile:
    return Tile(
        name=metric.name,
        label=metric.label,
        value=metric.value(now),
        previous=metric.value(before),
        unit=metric.unit.value,
        higher_is_better=metric.higher_is_better,
        help=metric.help,
    )


def tiles(engine: Engine, scope: Scope, metrics: tuple[Metric, ...] = TILES) -> list[Tile]:
    """The metrics (the tile set unless given) for scope and the period before it."""
    now, before = range_totals(engine, scope), range_totals(engine, scope.previous())
    return [tile(m, now, before) for m in metrics]
