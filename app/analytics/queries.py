"""Running analytics SQL: rows as plain dicts, parameters always bound."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, TextClause


def plain(value: Any) -> Any:
    """SQL sum() of integers comes back as Decimal: make it an int (or float)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def fetch_rows(engine: Engine, sql: TextClause, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row of sql as a dict of column name to plain Python value."""
    with engine.connect() as conn:
        rows = conn.execute(sql, params).mappings().all()
    return [{key: plain(value) for key, value in row.items()} for row in rows]


def fetch_one(engine: Engine, sql: TextClause, params: dict[str, Any]) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(sql, params).mappings().one()
    return {key: plain(value) for key, value in row.items()}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when there is nothing to divide by."""
    if not denominator or numerator is None:
        return None
    return float(numerator) / float(denominator)
