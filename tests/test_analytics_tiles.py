"""Monitoring's tiles and traffic series on sparse data: the numbers a person checks by eye.

The case from an operator's first day: one call for an unknown alias (a 404 in 1 ms) and one
1 s answer. The p95 latency must read about 1 s, not 1 ms; the 404 is a client error, not a
server error.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.analytics.monitoring import traffic_series
from app.analytics.scope import Scope
from app.db.database import Database
from tests.analytics_data import add_model, insert_requests, request_row, summary

DAY = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.mark.parametrize("span", [timedelta(hours=2), timedelta(days=1)])
def test_one_404_and_one_answer(database: Database, span: timedelta) -> None:
    engine = database.engine
    model = add_model(engine, "m.gguf")
    at = DAY + timedelta(minutes=30)
    insert_requests(
        engine,
        [
            request_row(
                at,
                alias="no-such-alias",
                status="rejected",
                http_status=404,
                ttft_ms=None,
                total_ms=1.0,
                completion_tokens=None,
            ),
            request_row(at + timedelta(seconds=5), model_id=model, ttft_ms=200.0, total_ms=1000.0),
        ],
    )
    scope = Scope(start=DAY, end=DAY + span)
    now = summary(engine, scope)
    assert now.requests == 2
    assert (now.errors, now.client_errors) == (0, 1)
    assert now.error_rate == 0 and now.client_error_rate == 0.5
    assert now.total_p95_ms is not None
    # Histogram quantile at every range: within the 9 %-wide bin of the 1 s answer.
    assert now.total_p95_ms == pytest.approx(1000, rel=0.09)

    rows = traffic_series(engine, scope)
    by_model = {r["model"]: r for r in rows}
    assert by_model["m.gguf"]["client_error_rate"] == 0
    assert by_model[None]["client_error_rate"] == 1.0
    assert all(r["error_rate"] == 0 for r in rows)


def test_server_errors_are_5xx_and_cut_streams(database: Database) -> None:
    engine = database.engine
    at = DAY + timedelta(minutes=1)
    rows = [
        request_row(at, status="error", http_status=502),  # worker failed
        request_row(at, status="error", http_status=None),  # stream cut mid-way
        request_row(at, status="rejected", http_status=503),  # no live worker
        request_row(at, status="rejected", http_status=429),  # rate limited: client side
        request_row(at, status="error", http_status=400),  # a bad parameter
        request_row(at, status="cancelled", http_status=499),  # client hung up: neither
        request_row(at),
    ]
    insert_requests(engine, rows)
    for span in (timedelta(hours=1), timedelta(days=1)):
        now = summary(engine, Scope(start=DAY, end=DAY + span))
        assert (now.requests, now.errors, now.client_errors) == (7, 3, 2), span


def test_sparse_charts_get_a_readable_span_and_hide_unknown_models() -> None:
    from app.ui import charts

    at = DAY + timedelta(minutes=30)
    rows = [
        {"t": at, "model": "m.gguf", "total_p95_ms": 1000.0},
        {"t": at, "model": None, "total_p95_ms": 1.0},
    ]
    known = charts.known_models(rows)
    assert [r["model"] for r in known] == ["m.gguf"]
    fig = charts.lines(known, {"p95": "total_p95_ms"}, title="Total latency", y_title="ms")
    assert [trace.name for trace in fig.data] == ["m.gguf p95"]
    # One point in time: an hour either side, not Plotly's sub-millisecond zoom.
    assert list(fig.layout.xaxis.range) == [at - timedelta(hours=1), at + timedelta(hours=1)]
    two_points = [*known, {"t": at + timedelta(hours=2), "model": "m.gguf", "total_p95_ms": 9.0}]
    spread = charts.lines(two_points, {"p95": "total_p95_ms"}, title="", y_title="")
    assert spread.layout.xaxis.range is None
