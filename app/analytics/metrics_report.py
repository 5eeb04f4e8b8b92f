"""The tile numbers of a range, as `herd metrics` prints them and GET /admin/v1/metrics
returns them: the same catalog metrics the Monitoring page's tiles show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from app.analytics.catalog import TILES, Metric, metric
from app.analytics.scope import RangePreset, last, range_preset
from app.analytics.summary import Tile, tiles
from app.analytics.traffic import TrafficClass, parse_classes
from app.analytics.units import format_value


@dataclass(frozen=True)
class MetricsQuery:
    """What a metrics report covers, checked: a preset range, an alias, the traffic classes
    and the catalog metrics."""

    preset: RangePreset
    alias: str | None
    classes: tuple[TrafficClass, ...]
    metrics: tuple[Metric, ...]


def metrics_query(
    range_key: str = "24h",
    alias: str | None = None,
    include: Sequence[str] = (),
    metric_names: Sequence[str] = (),
) -> MetricsQuery:
    """The query the arguments name (the tiles unless metrics are named); UnknownRange,
    UnknownMetric or UnknownTrafficClass naming what the catalog does not know."""
    return MetricsQuery(
        preset=range_preset(range_key),
        alias=alias or None,
        classes=parse_classes(include),
        metrics=tuple(metric(name) for name in metric_names) or TILES,
    )


def metrics_report(
    engine: Engine, query: MetricsQuery, now: datetime | None = None
) -> dict[str, Any]:
    """The query's metrics over its range ending now, each beside the period before."""
    scope = last(
        query.preset.span, now or datetime.now(UTC), alias=query.alias, classes=query.classes
    )
    shown = tiles(engine, scope, query.metrics)
    return {
        "range": query.preset.key,
        "start": scope.start.isoformat(),
        "end": scope.end.isoformat(),
        "alias": scope.alias,
        "classes": [c.value for c in query.classes],
        "metrics": {t.name: t.as_dict() for t in shown},
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as aligned text lines (one per metric, then the period)."""
    rows = [
        Tile(name, m["label"], m["value"], m["previous"], m["unit"], m["higher_is_better"], "")
        for name, m in report["metrics"].items()
    ]
    width = max((len(t.label) for t in rows), default=0)
    lines = [
        f"{t.label:<{width}}  {format_value(t.value, t.unit):>12}"
        f"   (before: {format_value(t.previous, t.unit)})"
        for t in rows
    ]
    scope = f"alias {report['alias']}" if report["alias"] else "all aliases"
    lines.append(
        f"{report['start']} .. {report['end']} ({report['range']}), {scope}, "
        f"traffic: {', '.join(report['classes'])}"
    )
    return lines
