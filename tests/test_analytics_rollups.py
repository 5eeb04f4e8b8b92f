"""Rollups kept by triggers, and the series read from them, against a Python reference."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, text

from app.analytics.monitoring import latency_series, session_series, traffic_series
from app.analytics.scope import Scope
from app.db.database import Database
from tests.analytics_data import (
    add_model,
    insert_feedback,
    insert_requests,
    request_row,
    summary,
)

BASE = datetime(2026, 1, 5, tzinfo=UTC)
HOURS = 30


def _generate(engine: Engine, seed: int = 7) -> tuple[list[dict[str, Any]], dict[int, str]]:
    rng = np.random.default_rng(seed)
    models = {add_model(engine, "a.gguf"): "a.gguf", add_model(engine, "b.gguf"): "b.gguf"}
    ids = list(models)
    rows = []
    for _i in range(1500):
        model = ids[int(rng.integers(2))]
        # "refused": a 4xx, the client's mistake (unknown alias); not a server error.
        kind = str(
            rng.choice(["ok", "ok", "ok", "ok", "error", "rejected", "refused", "cancelled"])
        )
        status = "rejected" if kind == "refused" else kind
        rows.append(
            request_row(
                BASE + timedelta(seconds=float(rng.uniform(0, HOURS * 3600))),
                alias=str(rng.choice(["chat", "code"])),
                model_id=model,
                worker_id=int(rng.integers(1, 3)) if rng.random() < 0.9 else None,
                session_id=f"s{int(rng.integers(300))}" if rng.random() < 0.8 else None,
                prompt_tokens=int(rng.integers(1, 4)) * 10,
                ttft_ms=float(rng.lognormal(5, 0.5)) if status == "ok" else None,
                total_ms=float(rng.lognormal(7, 0.6)),
                queue_ms=float(rng.exponential(20)),
                tokens_per_second=float(rng.uniform(10, 60)),
                status=status,
                http_status={"ok": 200, "error": 500, "rejected": 503, "refused": 404}.get(
                    kind, 499
                ),
                cache_hit=bool(rng.random() < 0.2),
            )
        )
    # Three statements, as three gateway batches: the rollups must merge them.
    order = sorted(rows, key=lambda r: r["created_at"])
    for part in (order[:400], order[400:900], order[900:]):
        insert_requests(engine, part)
    return rows, models


def _server_error(r: dict[str, Any]) -> bool:
    return bool(r["http_status"] >= 500)


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (_hour(r["created_at"]), r["alias"] or "", r["model_id"] or 0, r["worker_id"] or 0)


def _hourly(engine: Engine) -> dict[tuple[Any, ...], dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM requests_hourly")).mappings().all()
    return {(r["hour"], r["alias"], r["model_id"], r["worker_id"]): dict(r) for r in rows}


@pytest.fixture
def loaded(database: Database) -> tuple[Engine, list[dict[str, Any]], dict[int, str]]:
    rows, models = _generate(database.engine)
    return database.engine, rows, models


def test_hourly_rollup_matches_python(loaded: Any) -> None:
    engine, rows, _ = loaded
    expected: dict[tuple[Any, ...], Counter[str]] = defaultdict(Counter)
    sums: dict[tuple[Any, ...], float] = defaultdict(float)
    for r in rows:
        c = expected[_key(r)]
        c["requests"] += 1
        c["errors"] += _server_error(r)
        c["cache_hits"] += r["cache_hit"]
        c["ttft_n"] += r["ttft_ms"] is not None
        sums[_key(r)] += r["total_ms"]
    got = _hourly(engine)
    assert set(got) == set(expected)
    for key, counts in expected.items():
        for column, value in counts.items():
            assert got[key][column] == value, (key, column)
        assert got[key]["total_sum_ms"] == pytest.approx(sums[key])
    with engine.connect() as conn:
        hist = conn.execute(text("SELECT metric, sum(n) FROM latency_hourly GROUP BY metric")).all()
    assert dict(hist) == {
        "ttft": sum(r["ttft_ms"] is not None for r in rows),
        "total": len(rows),
        "queue": len(rows),
    }


def test_feedback_insert_update_delete_keep_rollup_counts(loaded: Any) -> None:
    engine, rows, _ = loaded
    rated = rows[:300]
    insert_feedback(
        engine,
        [
            {"request_id": r["id"], "rating": 1 if i % 3 else -1, "comment": "x" if i % 5 else ""}
            for i, r in enumerate(rated)
        ],
    )
    with engine.begin() as conn:
        # Flip 30 votes, delete 20: the hourly counts follow.
        conn.execute(
            text("UPDATE feedback SET rating = -rating WHERE request_id = ANY(:ids)"),
            {"ids": [r["id"] for r in rated[:30]]},
        )
        conn.execute(
            text("DELETE FROM feedback WHERE request_id = ANY(:ids)"),
            {"ids": [r["id"] for r in rated[30:50]]},
        )
        truth = conn.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE rating = 1), "
                "count(*) FILTER (WHERE comment <> '') FROM feedback"
            )
        ).one()
        rolled = conn.execute(
            text("SELECT sum(ratings), sum(thumbs_up), sum(comments) FROM requests_hourly")
        ).one()
    assert tuple(int(x) for x in rolled) == tuple(truth)
    assert truth[0] == 280


def test_rebuild_reproduces_the_incremental_rollups(loaded: Any) -> None:
    engine, rows, _ = loaded
    insert_feedback(engine, [{"request_id": r["id"], "rating": 1} for r in rows[:100]])
    before = _hourly(engine)
    with engine.connect() as conn:
        sessions_before = conn.execute(
            text("SELECT * FROM request_sessions ORDER BY session_id")
        ).all()
    with engine.begin() as conn:
        conn.execute(text("SELECT herd_rebuild_rollups('-infinity', 'infinity')"))
        sessions_after = conn.execute(
            text("SELECT * FROM request_sessions ORDER BY session_id")
        ).all()
    after = _hourly(engine)
    assert set(after) == set(before)
    for key in before:
        for column, value in before[key].items():
            if isinstance(value, float):  # sums of floats may differ in the last bits
                assert after[key][column] == pytest.approx(value), (key, column)
            else:
                assert after[key][column] == value, (key, column)
    assert sessions_after == sessions_before


def test_sessions_and_regenerates_match_python(loaded: Any) -> None:
    engine, rows, _ = loaded
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["session_id"]:
            by_session[r["session_id"]].append(r)
    with engine.connect() as conn:
        got = {
            row.session_id: row
            for row in conn.execute(text("SELECT * FROM request_sessions")).all()
        }
    assert set(got) == set(by_session)
    for session_id, turns in by_session.items():
        turns.sort(key=lambda r: (r["created_at"], str(r["id"])))
        regenerates = sum(
            1 for a, b in itertools.pairwise(turns) if a["prompt_tokens"] == b["prompt_tokens"]
        )
        row = got[session_id]
        assert row.turns == len(turns)
        assert row.regenerates == regenerates, session_id
        assert row.first_at == turns[0]["created_at"]
        assert row.model_id == turns[0]["model_id"]
    scope = Scope(start=BASE, end=BASE + timedelta(hours=HOURS))
    series = session_series(engine, scope)
    assert sum(r["sessions"] for r in series) == len(by_session)


def test_traffic_series_from_rollups_matches_python(loaded: Any) -> None:
    engine, rows, models = loaded
    scope = Scope(start=BASE, end=BASE + timedelta(hours=HOURS), alias="chat")
    series = traffic_series(engine, scope)  # 30 h: hourly buckets from the rollups
    expected: Counter[tuple[datetime, str]] = Counter()
    errors: Counter[tuple[datetime, str]] = Counter()
    for r in rows:
        if r["alias"] == "chat":
            expected[(_hour(r["created_at"]), models[r["model_id"]])] += 1
            errors[(_hour(r["created_at"]), models[r["model_id"]])] += _server_error(r)
    got = {(r["t"], r["model"]): r for r in series}
    assert {k: v["requests"] for k, v in got.items()} == dict(expected)
    assert {k: v["errors"] for k, v in got.items()} == {k: errors[k] for k in expected}


def test_raw_latency_percentiles_within_a_bin_of_nearest_rank(loaded: Any) -> None:
    # Minute buckets read raw rows put into the rollups' histogram bins (as the tiles do),
    # so a percentile is within one 9 %-wide bin of the nearest-rank value.
    engine, rows, models = loaded
    start = BASE + timedelta(hours=5)
    scope = Scope(start=start, end=start + timedelta(hours=2), worker_id=1)
    series = latency_series(engine, scope)  # 2 h: minute buckets from the raw rows
    groups: dict[tuple[datetime, str], list[float]] = defaultdict(list)
    for r in rows:
        if scope.start <= r["created_at"] < scope.end and r["worker_id"] == 1:
            t = r["created_at"].replace(second=0, microsecond=0)
            groups[(t, models[r["model_id"]])].append(r["total_ms"])
    got = {(r["t"], r["model"]): r for r in series}
    assert set(got) == set(groups)
    for key, values in groups.items():
        for q in (50, 95):
            exact = np.percentile(values, q, method="inverted_cdf")
            assert got[key][f"total_p{q}_ms"] == pytest.approx(exact, rel=0.095)


def test_rollup_percentiles_within_a_histogram_bin(loaded: Any) -> None:
    engine, rows, _models = loaded
    scope = Scope(start=BASE, end=BASE + timedelta(hours=HOURS))
    whole = summary(engine, scope)  # hour-granular: histogram quantiles
    exact = np.percentile([r["total_ms"] for r in rows], 95)
    exact_ttft = np.percentile([r["ttft_ms"] for r in rows if r["ttft_ms"] is not None], 95)
    # Bins are 2^(1/8) (9 %) wide.
    assert whole.total_p95_ms == pytest.approx(exact, rel=0.09)
    assert whole.ttft_p95_ms == pytest.approx(exact_ttft, rel=0.09)
    assert whole.requests == len(rows)
    assert whole.errors == sum(_server_error(r) for r in rows)
    assert whole.client_errors == sum(r["http_status"] == 404 for r in rows) > 0


# What the 0008 rollups hold, recomputed from their sources: they must match exactly.
REVIEWS_TRUTH_SQL = """
SELECT f.request_id, sum(f.rating)::int, count(*)::int,
       count(*) FILTER (WHERE f.rating = -1 AND coalesce(f.comment, '') <> '')::int,
       min(f.created_at), max(f.created_at), max(f.updated_at),
       (array_agg(f.comment ORDER BY f.updated_at DESC)
         FILTER (WHERE coalesce(f.comment, '') <> ''))[1],
       r.alias, r.model_id
FROM feedback f JOIN requests r ON r.id = f.request_id
GROUP BY f.request_id, r.alias, r.model_id ORDER BY 1
"""
REVIEWS_SQL = """
SELECT request_id, net, votes, down_comments, first_voted_at, last_voted_at, rated_at,
       comment, alias, model_id
FROM feedback_reviews ORDER BY 1
"""
SESSIONS_TRUTH_SQL = """
SELECT date_trunc('hour', first_at, 'UTC'), coalesce(alias, ''), coalesce(model_id, 0),
       count(*), sum(turns), sum(regenerates), count(*) FILTER (WHERE turns = 1)
FROM request_sessions GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
SESSIONS_SQL = """
SELECT hour, alias, model_id, sessions, turns, regenerates, one_turn
FROM sessions_hourly WHERE sessions <> 0 ORDER BY 1, 2, 3
"""


def _rows(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql))]


def test_feedback_reviews_follow_votes_through_insert_update_delete(loaded: Any) -> None:
    engine, rows, _ = loaded
    rated = rows[:200]
    # Two users on some requests, so a request can hold votes of both signs and comments.
    votes = [
        {"request_id": r["id"], "rating": 1 if i % 3 else -1, "comment": "slow" if i % 4 else "",
         "user_id": user, "created_at": BASE + timedelta(minutes=i + 7 * n),
         "updated_at": BASE + timedelta(minutes=i + 7 * n)}
        for i, r in enumerate(rated)
        for n, user in enumerate(["u1", "u2"][: 1 + i % 2])
    ]  # fmt: skip
    insert_feedback(engine, votes)
    assert _rows(engine, REVIEWS_SQL) == _rows(engine, REVIEWS_TRUTH_SQL)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE feedback SET rating = -rating, comment = 'wrong', "
                "updated_at = updated_at + interval '1 day' WHERE request_id = ANY(:ids)"
            ),
            {"ids": [r["id"] for r in rated[:40]]},
        )
        conn.execute(
            text("DELETE FROM feedback WHERE request_id = ANY(:ids) AND user_id = 'u2'"),
            {"ids": [r["id"] for r in rated[40:80]]},
        )
        conn.execute(
            text("DELETE FROM feedback WHERE request_id = ANY(:ids)"),
            {"ids": [r["id"] for r in rated[80:100]]},
        )
    reviews = _rows(engine, REVIEWS_SQL)
    assert reviews == _rows(engine, REVIEWS_TRUTH_SQL)
    assert len(reviews) == 180 and any(row[2] == 2 for row in reviews)


def test_sessions_hourly_follows_request_sessions(loaded: Any) -> None:
    engine, rows, _ = loaded
    # Later turns of existing sessions and new sessions (UPDATE and INSERT of sessions),
    # then a rebuild that deletes and re-inserts them (DELETE).
    late = [
        request_row(BASE + timedelta(hours=HOURS, minutes=i), session_id=f"s{i % 400}",
                    prompt_tokens=40)
        for i in range(120)
    ]  # fmt: skip
    insert_requests(engine, late)
    assert _rows(engine, SESSIONS_SQL) == _rows(engine, SESSIONS_TRUTH_SQL)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM requests WHERE id = ANY(:ids)"),
                     {"ids": [r["id"] for r in rows[:500]]})  # fmt: skip
        conn.execute(
            text("SELECT herd_rebuild_rollups(:lo, :hi)"),
            {"lo": BASE, "hi": BASE + timedelta(hours=HOURS + 3)},
        )
    assert _rows(engine, SESSIONS_SQL) == _rows(engine, SESSIONS_TRUTH_SQL)


def test_session_series_counts_partial_hours_and_open_sessions(loaded: Any) -> None:
    engine, _, _ = loaded
    # A range cut mid-hour at both ends: partial hours come from the sessions themselves.
    scope = Scope(start=BASE + timedelta(hours=2, minutes=17), end=BASE + timedelta(hours=9.5))
    with engine.connect() as conn:
        truth = conn.execute(
            text("SELECT count(*), sum(turns) FROM request_sessions "
                 "WHERE first_at >= :start AND first_at < :end"),
            {"start": scope.start, "end": scope.end},
        ).one()  # fmt: skip
    series = session_series(engine, scope)
    assert sum(r["sessions"] for r in series) == truth[0] > 0
    assert sum(r["turns"] for r in series) == truth[1]
    # A session with a turn just now is not over: not counted as ended or one-turn.
    now = datetime.now(UTC)
    insert_requests(engine, [request_row(now - timedelta(minutes=1), session_id="live")])
    live = session_series(engine, Scope(start=now - timedelta(hours=1), end=now))
    assert sum(r["sessions"] for r in live) == 1
    assert sum(r["ended"] for r in live) == 0 and sum(r["one_turn"] for r in live) == 0
