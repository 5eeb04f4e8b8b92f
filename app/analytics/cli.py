"""`herd metrics`: the Monitoring tiles of a range, from the metric catalog."""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.analytics.catalog import UnknownMetric
from app.analytics.metrics_report import metrics_query, metrics_report, report_lines
from app.analytics.scope import RANGE_PRESETS, UnknownRange
from app.analytics.traffic import TrafficClass, UnknownTrafficClass
from app.common.cli_output import echo, warn
from app.config import Settings
from app.db.database import Database


def cmd_metrics(settings: Settings, args: argparse.Namespace) -> int:
    try:
        # Checked before the database is opened: a typo costs nothing.
        query = metrics_query(args.range, args.alias, args.include or [], args.metric or [])
    except (UnknownRange, UnknownMetric, UnknownTrafficClass) as exc:
        warn(f"herd metrics: {exc}")
        return 2
    with Database.open_current(settings) as db:
        report = metrics_report(db.engine, query)
    if args.json:
        echo(json.dumps(report, indent=2))
    else:
        for line in report_lines(report):
            echo(line)
    return 0


def add_commands(sub: Any, command: Any) -> None:
    """Hook `herd metrics` into the `herd` parser."""
    p = command(sub, "metrics", cmd_metrics, "the Monitoring tiles of a range (metric catalog)")
    p.add_argument(
        "--range",
        default="24h",
        metavar="RANGE",
        help=f"one of {', '.join(r.key for r in RANGE_PRESETS)} (default 24h), ending now",
    )
    p.add_argument("--alias", default=None, help="only this alias")
    others = ",".join(c.value for c in TrafficClass if c is not TrafficClass.LIVE)
    p.add_argument(
        "--include",
        action="append",
        metavar="CLASSES",
        help=f"also count these traffic classes (comma list of {others}); live always counts",
    )
    p.add_argument(
        "--metric",
        action="append",
        metavar="NAME",
        help="a catalog metric to show (repeatable; default: the tiles)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
