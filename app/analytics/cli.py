"""`herd metrics` (the Monitoring tiles of a range, from the metric catalog), `herd export`
(a training dataset from feedback) and `herd demo-traffic` (synthetic traffic to look at)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from app.analytics.catalog import UnknownMetric
from app.analytics.metrics_report import metrics_query, metrics_report, report_lines
from app.analytics.scope import RANGE_PRESETS, UnknownRange
from app.analytics.traffic import TrafficClass, UnknownTrafficClass
from app.common.cli_output import echo, utc_time, warn
from app.common.cli_parser import SubParsers, command
from app.config import Settings
from app.db.database import Database
from app.store.catalog import ModelStore


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


def cmd_demo_traffic(settings: Settings, args: argparse.Namespace) -> int:
    from app.analytics.demo_traffic import generate_demo_traffic, purge_synthetic

    with Database.open_current(settings) as db:
        if args.delete:
            echo(f"deleted {purge_synthetic(db.engine)} synthetic requests")
            return 0
        with tqdm(total=args.requests, unit="req", unit_scale=True, desc="demo traffic") as bar:

            def progress(done: int, total: int) -> None:
                bar.update(done - bar.n)

            result = generate_demo_traffic(
                db.engine, args.requests, args.days, seed=args.seed, progress=progress
            )
        echo(
            f"inserted {result.requests} synthetic requests and {result.feedback} ratings "
            f"from {result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M} UTC; "
            "remove them with `herd demo-traffic --delete`"
        )
    return 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from app.analytics.export import DatasetKind, ExportError, ExportFilter, export_dataset

    with Database.open_current(settings) as db:
        models = {m.name: m.id for m in ModelStore(db.engine, settings.models_path).list()}
        unknown = [name for name in args.model if name not in models]
        if unknown:
            warn(f"herd export: no model named {', '.join(unknown)}")
            return 1
        filters = ExportFilter(
            start=args.since,
            end=args.until,
            model_ids=tuple(models[name] for name in args.model),
            aliases=tuple(args.alias),
            min_rating=args.min_rating,
            include_synthetic=args.include_synthetic,
            include_cut=args.include_cut,
            redact=not args.no_redact,
        )
        with tqdm(unit="row", desc=f"export {args.kind}") as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            try:
                result = export_dataset(
                    db.engine, DatasetKind(args.kind), Path(args.output), filters, progress
                )
            except ExportError as exc:
                warn(f"herd export: {exc}")
                return 2
    echo(
        f"wrote {result.records} records to {result.path} ({result.duplicates} duplicates "
        f"removed; left out as no real user turn: {result.excluded.summary()}); "
        f"card: {result.card_path}"
    )
    return 0


def register(sub: SubParsers) -> None:
    """`herd demo-traffic`, `herd export` and `herd metrics`."""
    demo = command(
        sub, "demo-traffic", cmd_demo_traffic, "fill the database with synthetic traffic"
    )
    demo.add_argument("--requests", type=int, default=100_000, help="rows (default 100000)")
    demo.add_argument("--days", type=float, default=14.0, help="spread over (default 14 days)")
    demo.add_argument("--seed", type=float, default=None, help="random seed in [-1, 1]")
    demo.add_argument("--delete", action="store_true", help="delete all synthetic traffic")

    export = command(sub, "export", cmd_export, "write a training dataset from feedback (JSONL)")
    export.add_argument("kind", choices=["sft", "preference"], help="dataset kind")
    export.add_argument("--output", "-o", required=True, help="the .jsonl file to write")
    export.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
    export.add_argument("--alias", action="append", default=[], help="only this alias (repeatable)")
    export.add_argument("--since", type=utc_time, default=None, help="requests from (ISO)")
    export.add_argument("--until", type=utc_time, default=None, help="requests before (ISO)")
    export.add_argument(
        "--min-rating", type=int, default=1, help="SFT: least net rating (default 1)"
    )
    export.add_argument(
        "--include-synthetic", action="store_true", help="include demo-traffic rows"
    )
    export.add_argument(
        "--include-cut", action="store_true", help="keep answers that stopped at max_tokens"
    )
    export.add_argument("--no-redact", action="store_true", help="keep emails, phones, cards")

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
