"""Hand-made request, message and feedback rows for the analytics tests."""

from __future__ import annotations

import uuid
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Engine, insert, text

from app.analytics.catalog import range_totals, values
from app.analytics.scope import Scope
from app.db.tables import Feedback, Message, Model, Request


def add_model(engine: Engine, name: str) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(Model)
                .values(name=name, path=name, size_bytes=1, mtime_ns=1, status="valid")
                .returning(Model.id)
            ).scalar_one()
        )


def request_row(created_at: datetime, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "created_at": created_at,
        "alias": "chat",
        "model_id": None,
        "worker_id": None,
        "session_id": None,
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "queue_ms": 1.0,
        "ttft_ms": 100.0,
        "total_ms": 1000.0,
        "tokens_per_second": 30.0,
        "status": "ok",
        "http_status": 200,
        "cache_hit": False,
        # Every row names every column: one INSERT of many rows takes the first row's keys.
        "batch_id": None,
        "synthetic": False,
    }
    row.update(values)
    return row


def insert_requests(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """One INSERT statement for all rows, as the gateway's batch writer does."""
    with engine.begin() as conn:
        conn.execute(insert(Request), rows)


def insert_messages(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Message), rows)


def insert_feedback(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Feedback), rows)


def rollup_totals(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT coalesce(sum(requests), 0) AS requests, "
                "coalesce(sum(ratings), 0) AS ratings, coalesce(sum(thumbs_up), 0) AS thumbs_up "
                "FROM requests_hourly"
            )
        ).one()
    return {"requests": int(row.requests), "ratings": int(row.ratings), "up": int(row.thumbs_up)}


def summary(engine: Engine, scope: Scope) -> SimpleNamespace:
    """Every catalog metric of scope as attributes (`.requests`, `.total_p95_ms` ...)."""
    return SimpleNamespace(**values(range_totals(engine, scope)))
