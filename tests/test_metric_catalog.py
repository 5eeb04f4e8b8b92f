"""The metric catalog gives one answer per number: for generated mixed traffic (live, batch,
synthetic; errors, 4xx, cancels; ratings) across hours and days, every tile value that
`herd metrics` reports equals SQL over the raw rows, exactly for counts and within one
histogram bin for percentiles, at every range preset and for every choice of classes.

The reference SQL below is written here on purpose, apart from the catalog's: it is what an
analyst would type against `requests` and `feedback`.
"""

from __future__ import annotations

import json
import math
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.analytics.catalog import CATALOG, TILES, Metric, Unit
from app.analytics.metrics_report import metrics_query, metrics_report
from app.analytics.scope import RANGE_PRESETS
from app.control.keys import ApiKeys, KeyPolicy
from app.db.database import Database
from tests.analytics_data import add_model, insert_feedback, insert_requests, request_row
from tests.conftest import run_herd
from tests.gateway_harness import GatewayThread, gateway_settings

# Not on an hour: every range has partial hours at both ends.
NOW = datetime(2026, 3, 20, 10, 37, 12, 500_000, tzinfo=UTC)
CLASS_CHOICES = ([], ["batch"], ["synthetic"], ["batch", "synthetic"])

REFERENCE_SQL = text(
    """
    SELECT count(*) AS requests,
           count(*) FILTER (WHERE http_status >= 500
                             OR (http_status IS NULL AND status IN ('error', 'rejected')))
             AS errors,
           count(*) FILTER (WHERE status <> 'cancelled' AND http_status BETWEEN 400 AND 499)
             AS client_errors,
           avg(tokens_per_second) AS tokens_per_second,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_p95_ms,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY total_ms) AS total_p95_ms,
           (SELECT count(*) FROM feedback f JOIN requests q ON q.id = f.request_id
            WHERE q.created_at >= :start AND q.created_at < :end
              AND q.traffic_class = ANY(:classes)) AS ratings,
           (SELECT count(*) FROM feedback f JOIN requests q ON q.id = f.request_id
            WHERE q.created_at >= :start AND q.created_at < :end
              AND q.traffic_class = ANY(:classes) AND f.rating = 1) AS thumbs_up
    FROM requests
    WHERE created_at >= :start AND created_at < :end AND traffic_class = ANY(:classes)
    """
)


def reference(database: Database, start: datetime, end: datetime, classes: list[str]) -> Any:
    with database.engine.connect() as conn:
        row = (
            conn.execute(REFERENCE_SQL, {"start": start, "end": end, "classes": classes})
            .mappings()
            .one()
        )
    r = dict(row)
    r["error_rate"] = r["errors"] / r["requests"] if r["requests"] else None
    r["client_error_rate"] = r["client_errors"] / r["requests"] if r["requests"] else None
    r["feedback_rate"] = r["ratings"] / r["requests"] if r["requests"] else None
    r["thumbs_up_ratio"] = r["thumbs_up"] / r["ratings"] if r["ratings"] else None
    return r


def latency_bin(ms: float) -> int:
    """The rollups' histogram bin of a latency (revision 0005's herd_latency_bin)."""
    return min(max(math.floor(8 * math.log2(max(ms, 1.0))), 0), 159)


def assert_agrees(m: Metric, context: str, got: float | None, want: Any) -> None:
    if want is None or got is None:
        assert got is None and want is None, (context, got, want)
    elif m.unit is Unit.MS:
        # A histogram quantile lies in (or on the upper edge of) the nearest-rank value's bin.
        assert abs(latency_bin(got) - latency_bin(float(want))) <= 1, (context, got, want)
    elif m.name == "tokens_per_second":
        # A mean: the same sum added up in another order.
        assert got == pytest.approx(float(want), rel=1e-9), (context, got, want)
    else:
        assert got == want, (context, got, want)  # counts and ratios of counts: exact


# --- generated traffic ---------------------------------------------------------------

# Offsets before NOW that sit on or near every preset's edges, and anywhere in 35 days.
EDGES = sorted(
    {int(p.span.total_seconds()) + d for p in RANGE_PRESETS for d in (-2, -1, 0, 1, 2)}
    | {int(2 * p.span.total_seconds()) + d for p in RANGE_PRESETS for d in (-1, 0, 1)}
)
offsets = st.one_of(
    st.sampled_from(EDGES),
    st.integers(min_value=0, max_value=35 * 86_400),
    st.integers(min_value=0, max_value=7_200),
)
outcomes = st.sampled_from(
    [
        ("ok", 200),
        ("ok", 200),
        ("ok", 200),
        ("error", 500),
        ("error", None),
        ("rejected", 429),
        ("rejected", 404),
        ("cancelled", 499),
        ("cancelled", None),
    ]
)
latencies = st.one_of(st.none(), st.floats(min_value=0.2, max_value=200_000.0))

request_specs = st.fixed_dictionaries(
    {
        "offset_s": offsets,
        "fraction": st.floats(min_value=0, max_value=0.999),
        "class": st.sampled_from(["live", "live", "batch", "synthetic"]),
        "outcome": outcomes,
        "ttft_ms": latencies,
        "total_ms": latencies,
        "tps": st.one_of(st.none(), st.floats(min_value=0.5, max_value=500.0)),
        "alias": st.sampled_from(["chat", "code", None]),
        "model": st.integers(min_value=0, max_value=2),
        "rating": st.sampled_from([None, None, 1, -1]),
    }
)


def rows_of(specs: list[dict[str, Any]], models: list[int]) -> tuple[list[Any], list[Any]]:
    requests, feedback = [], []
    for spec in specs:
        status, http_status = spec["outcome"]
        row = request_row(
            NOW - timedelta(seconds=spec["offset_s"] + spec["fraction"]),
            alias=spec["alias"],
            model_id=models[spec["model"]],
            status=status,
            http_status=http_status,
            ttft_ms=spec["ttft_ms"],
            total_ms=spec["total_ms"],
            tokens_per_second=spec["tps"],
            batch_id="batch_p" if spec["class"] == "batch" else None,
            synthetic=spec["class"] == "synthetic",
        )
        requests.append(row)
        if spec["rating"] is not None:
            feedback.append({"request_id": row["id"], "rating": spec["rating"], "user_id": "u"})
    return requests, feedback


def _reset(database: Database) -> None:
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE requests, feedback, requests_hourly, latency_hourly, "
                "request_sessions, sessions_hourly CASCADE"
            )
        )


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(specs=st.lists(request_specs, min_size=0, max_size=60), split=st.integers(0, 60))
def test_tiles_equal_raw_sql_at_every_range_and_class(
    database: Database, specs: list[dict[str, Any]], split: int
) -> None:
    _reset(database)
    models = [add_model(database.engine, f"m-{uuid.uuid4().hex[:8]}.gguf") for _ in range(3)]
    requests, feedback = rows_of(specs, models)
    # Two statements: the rollup triggers add to rows the first one wrote.
    for part in (requests[:split], requests[split:]):
        if part:
            insert_requests(database.engine, part)
    if feedback:
        insert_feedback(database.engine, feedback)

    for preset in RANGE_PRESETS:
        for include in CLASS_CHOICES:
            report = metrics_report(
                database.engine, metrics_query(preset.key, include=include), now=NOW
            )
            classes = report["classes"]
            now = reference(database, NOW - preset.span, NOW, classes)
            before = reference(database, NOW - 2 * preset.span, NOW - preset.span, classes)
            for m in TILES:
                shown = report["metrics"][m.name]
                context = f"{m.name} over {preset.key} with {classes}"
                assert_agrees(m, context, shown["value"], now[m.name])
                assert_agrees(m, context + " (before)", shown["previous"], before[m.name])


def test_unknown_metric_range_or_class_is_named(database: Database) -> None:
    with pytest.raises(ValueError, match="'p97'"):
        metrics_query(metric_names=["p97"])
    with pytest.raises(ValueError, match="'2w'"):
        metrics_query("2w")
    with pytest.raises(ValueError, match="'canary'"):
        metrics_query(include=["batch,canary"])


def test_an_empty_range_is_zeros_and_no_data(database: Database) -> None:
    names = [m.name for m in CATALOG]
    report = metrics_report(database.engine, metrics_query("1h", metric_names=names), now=NOW)
    for m in CATALOG:
        value = report["metrics"][m.name]["value"]
        if m.unit is Unit.COUNT:
            assert value == 0, m.name
        elif m.name == "requests_per_minute":
            assert value == 0
        else:
            assert value is None, m.name  # "no data", never NaN


def _herd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_herd(*args, env=env)


def test_herd_metrics_cli(database: Database, herd_env: dict[str, str]) -> None:
    now = datetime.now(UTC)
    rows = [request_row(now - timedelta(minutes=5), total_ms=2000.0) for _ in range(3)]
    rows.append(request_row(now - timedelta(minutes=5), batch_id="batch_q", total_ms=90_000.0))
    rows.append(request_row(now - timedelta(minutes=4), alias="nope", http_status=404,
                            status="rejected"))  # fmt: skip
    insert_requests(database.engine, rows)

    plain = _herd("metrics", "--range", "1h", "--json", env=herd_env)
    assert plain.returncode == 0, plain.stderr
    got = json.loads(plain.stdout)["metrics"]
    assert got["requests"]["value"] == 4
    assert got["client_error_rate"]["value"] == 0.25
    assert latency_bin(got["total_p95_ms"]["value"]) in (latency_bin(2000), latency_bin(2000) + 1)

    both = _herd("metrics", "--range", "1h", "--include", "batch", "--json", env=herd_env)
    assert json.loads(both.stdout)["metrics"]["requests"]["value"] == 5

    text_out = _herd("metrics", "--range", "1h", "--alias", "nope", env=herd_env)
    assert text_out.returncode == 0, text_out.stderr
    assert "Client errors" in text_out.stdout and "100.0%" in text_out.stdout

    bad = _herd("metrics", "--range", "2w", env=herd_env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "herd metrics: unknown range '2w' (known: 1h, 6h, 24h, 3d, 7d, 30d)"
    ]
    bad_metric = _herd("metrics", "--metric", "p97", env=herd_env)
    assert bad_metric.returncode == 2 and "'p97'" in bad_metric.stderr


def test_admin_api_metrics(tmp_path: Path, db_url: str, database: Database) -> None:
    now = datetime.now(UTC)
    rows = [request_row(now - timedelta(minutes=m), total_ms=900.0) for m in (2, 3)]
    rows.append(request_row(now - timedelta(minutes=4), synthetic=True, total_ms=50_000.0))
    insert_requests(database.engine, rows)
    boss = ApiKeys(database.engine).create("boss", policy=KeyPolicy(admin=True)).key
    gateway = GatewayThread(gateway_settings(tmp_path, db_url), db_url)
    try:
        api = httpx.Client(
            base_url=f"{gateway.url}/admin/v1",
            headers={"Authorization": f"Bearer {boss}"},
            timeout=30,
        )
        plain = api.get("/metrics", params={"range": "1h"}).json()
        assert plain["classes"] == ["live"]
        assert plain["metrics"]["requests"]["value"] == 2
        assert latency_bin(plain["metrics"]["total_p95_ms"]["value"]) - latency_bin(900) in (0, 1)
        both = api.get("/metrics", params={"range": "1h", "include": "synthetic"}).json()
        assert both["metrics"]["requests"]["value"] == 3
        # The same numbers as the CLI's report of the same query.
        assert (
            plain["metrics"]
            == metrics_report(
                database.engine, metrics_query("1h"), now=datetime.fromisoformat(plain["end"])
            )["metrics"]
        )
        picked = api.get("/metrics", params=[("metric", "errors"), ("metric", "ratings")])
        assert set(picked.json()["metrics"]) == {"errors", "ratings"}
        for params, named in (
            ({"range": "2w"}, "'2w'"),
            ({"metric": "p97"}, "'p97'"),
            ({"include": "canary"}, "'canary'"),
        ):
            refused = api.get("/metrics", params=params)
            assert refused.status_code == 400, params
            assert named in refused.json()["error"]["message"]
        assert httpx.get(f"{gateway.url}/admin/v1/metrics", timeout=10).status_code == 401
    finally:
        gateway.stop()
