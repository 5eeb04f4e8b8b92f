"""Time every query behind the Monitoring, Retraining and Feedback review pages.

Fills a fresh database with `herd demo-traffic` data (N requests over 14 days, about
N/10 ratings), then times each page query over the last week (rollup path) and the last
hour (raw-row path), median of 3 runs. The anchor is the same week's latency chart computed
from raw rows with percentile_cont, what the page would cost without the rollups.

    python bench/analytics_bench.py --requests 1000000
    HERD_BENCH_DATABASE_URL=postgresql://... python bench/analytics_bench.py --requests 10000000

Without HERD_BENCH_DATABASE_URL it starts an embedded PostgreSQL under --home.

At 10M rows generation takes long enough to split the run: `--generate-only` fills a
database and keeps it (its name is printed), `--database NAME` brings that database to the
newest schema and times it without generating (rerun it after a query or index change).

    python bench/analytics_bench.py --requests 10000000 --generate-only
    flock /tmp/herd-bench.lock python bench/analytics_bench.py --database herd_bench_1a2b3c4d
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.analytics import monitoring
from app.analytics.demo_traffic import generate_demo_traffic
from app.analytics.queries import fetch_rows
from app.analytics.recommend import assess_versions
from app.analytics.review import ReviewFilter, list_rated
from app.analytics.scope import Scope
from app.analytics.summary import tiles
from app.analytics.versions import compare_versions, filter_options
from app.db import migrate
from app.db.embedded import EmbeddedPostgres
from app.db.engine import make_engine, sqlalchemy_url


def _median_s(fn: Callable[[], Any], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _generate(url: str, args: argparse.Namespace) -> datetime:
    """Fill the database at url; returns the `now` the traffic ends at."""
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        now = datetime.now(UTC)
        started = time.perf_counter()
        result = generate_demo_traffic(engine, args.requests, args.days, seed=0.42, now=now)
        generate_s = time.perf_counter() - started
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
        print(
            f"generated {result.requests} requests, {result.feedback} feedback in "
            f"{generate_s:.1f} s ({result.requests / generate_s:,.0f} rows/s)",
            flush=True,
        )
        return now
    finally:
        engine.dispose()


def _time_queries(url: str, now: datetime) -> None:
    """Print each page query's median time over the traffic that ends at now."""
    migrate.upgrade(url)  # a reused database gets the indexes and rollups added since
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            requests, feedback, db_size = conn.execute(text(
                "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM feedback), "
                "pg_size_pretty(pg_database_size(current_database()))"
            )).one()  # fmt: skip
        week = Scope(start=now - timedelta(days=7), end=now)
        hour = Scope(start=now - timedelta(hours=1), end=now)
        three_days = Scope(start=now - timedelta(days=3), end=now)
        anchor_params = {**week.params(), "bin": timedelta(hours=3), "origin": now}
        queries: list[tuple[str, Callable[[], Any]]] = [
            ("anchor: week latency from raw rows", lambda: fetch_rows(
                engine, monitoring.RAW_LATENCY_SQL, anchor_params)),
            ("tiles (week + previous week)", lambda: tiles(engine, week)),
            ("latency chart (week)", lambda: monitoring.latency_series(engine, week)),
            ("traffic chart (week)", lambda: monitoring.traffic_series(engine, week)),
            ("engagement chart (week)", lambda: monitoring.engagement_series(engine, week)),
            ("sessions chart (week)", lambda: monitoring.session_series(engine, week)),
            ("A/B versions (week)", lambda: compare_versions(engine, week, "assistant")),
            ("filter options", lambda: filter_options(engine)),
            ("tiles (hour, raw)", lambda: tiles(engine, hour)),
            ("latency chart (hour, raw)", lambda: monitoring.latency_series(engine, hour)),
            ("traffic chart (hour, raw)", lambda: monitoring.traffic_series(engine, hour)),
            ("retraining signals (3 days)", lambda: assess_versions(engine, three_days)),
            ("feedback review list (thumbs down)", lambda: list_rated(
                engine, ReviewFilter(rating=-1, limit=200))),
            ("feedback review list (page default: down, 30 days)", lambda: list_rated(
                engine, ReviewFilter(rating=-1, start=now - timedelta(days=30), limit=200))),
        ]  # fmt: skip
        print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs")
        print(f"rows: {requests} requests, {feedback} feedback; database {db_size}")
        anchor = None
        print("| query | median of 3 (ms) | x anchor |")
        print("|---|---:|---:|")
        for label, fn in queries:
            seconds = _median_s(fn)
            anchor = anchor or seconds
            print(f"| {label} | {seconds * 1000:,.1f} | {seconds / anchor:.3f} |", flush=True)
    finally:
        engine.dispose()


def _traffic_end(url: str) -> datetime:
    """When a kept database's traffic ends: its newest request (the generator's `now`)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            end = conn.execute(text("SELECT max(created_at) FROM requests")).scalar_one()
    finally:
        engine.dispose()
    if end is None:
        raise SystemExit("that database has no requests; fill one with --generate-only")
    return end  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--home", default="/tmp/herd-bench")
    parser.add_argument(
        "--generate-only",
        action="store_true",
        help="fill a new database, keep it and print its name; time nothing",
    )
    parser.add_argument(
        "--database",
        metavar="NAME",
        help="time this existing database (from --generate-only) instead of generating",
    )
    args = parser.parse_args()
    if args.generate_only and args.database:
        parser.error("--generate-only makes a new database; leave out --database")

    server_url = os.environ.get("HERD_BENCH_DATABASE_URL")
    embedded = None
    if not server_url:
        embedded = EmbeddedPostgres(Path(args.home) / "pgdata")
        server_url = embedded.start()
    admin = create_engine(sqlalchemy_url(server_url), isolation_level="AUTOCOMMIT")
    name = args.database or f"herd_bench_{uuid.uuid4().hex[:8]}"
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    drop = not (args.database or args.generate_only)
    try:
        if args.database:
            _time_queries(url, _traffic_end(url))
            return
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        if args.generate_only:
            print(f"database: {name}", flush=True)
        now = _generate(url, args)
        if not args.generate_only:
            _time_queries(url, now)
    finally:
        if drop:
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
        if embedded is not None:
            embedded.release()


if __name__ == "__main__":
    main()
