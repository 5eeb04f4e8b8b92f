"""Widgets the analytics pages share: the period and filter pickers, tiles, chart blocks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

import streamlit as st

from app.analytics.scope import Scope
from app.analytics.summary import Tile
from app.analytics.versions import FilterOptions
from app.ui.charts import PLOTLY_CONFIG, csv_bytes

RANGES = {
    "Last hour": timedelta(hours=1),
    "Last 6 hours": timedelta(hours=6),
    "Last day": timedelta(days=1),
    "Last 3 days": timedelta(days=3),
    "Last week": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
}
ANY = "(any)"


def period_picker(key: str, default: str = "Last day") -> tuple[datetime, datetime]:
    """A time range: one of RANGES ending now, or custom dates (UTC)."""
    choices = [*RANGES, "Custom"]
    choice = st.selectbox("Time range", choices, index=choices.index(default), key=f"{key}_range")
    now = datetime.now(UTC)
    if choice != "Custom":
        return now - RANGES[choice], now
    today = now.date()
    picked = st.date_input(
        "From - to (UTC, inclusive)", (today - timedelta(days=7), today), key=f"{key}_dates"
    )
    if not isinstance(picked, tuple) or len(picked) != 2:
        st.info("Pick the last day of the range too.")
        st.stop()
    first, last = picked
    return (
        datetime.combine(first, time(), UTC),
        datetime.combine(last + timedelta(days=1), time(), UTC),
    )


def scope_picker(options: FilterOptions, key: str, default: str = "Last day") -> Scope:
    """Period, alias, model version and worker filters in one row."""
    cols = st.columns(4)
    with cols[0]:
        start, end = period_picker(key, default)
    alias = cols[1].selectbox("Alias", [ANY, *options.aliases], key=f"{key}_alias")
    models = {ANY: None, **{name: model_id for model_id, name in options.models.items()}}
    model = cols[2].selectbox("Model version", list(models), key=f"{key}_model")
    workers = [ANY, *[str(w) for w in options.workers]]
    worker = cols[3].selectbox("Worker", workers, key=f"{key}_worker")
    include_batch = st.checkbox(
        "Include batch traffic",
        key=f"{key}_batch",
        help="Lines of batches (marked in the request log) are no users: left out by default.",
    )
    return Scope(
        start=start,
        end=end,
        alias=None if alias == ANY else alias,
        model_id=models[model],
        worker_id=None if worker == ANY else int(worker),
        include_batch=include_batch,
    )


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:,.0f} ms"
    if unit == "rate":
        return f"{value:.1%}"
    if unit == "per_s":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def tile_row(tiles: Sequence[Tile]) -> None:
    """Metric tiles with the change against the previous period."""
    for column, tile in zip(st.columns(len(tiles)), tiles, strict=True):
        change = tile.change
        delta = None
        if change is not None:
            delta = f"{change:+.1%}" if tile.unit == "rate" else _format(change, tile.unit)
            if change > 0 and not delta.startswith("+"):
                delta = "+" + delta
        column.metric(
            tile.label,
            _format(tile.value, tile.unit),
            delta=delta,
            delta_color="normal" if tile.higher_is_better else "inverse",
            help=f"{tile.help}. Previous period: {_format(tile.previous, tile.unit)}",
        )


def chart(fig: Any, rows: Sequence[dict[str, Any]], key: str) -> None:
    """A Plotly chart (PNG from its modebar) with a CSV download of its data."""
    if not rows:
        st.caption("No data in this period.")
        return
    st.plotly_chart(fig, config=PLOTLY_CONFIG, key=f"{key}_chart")
    st.download_button(
        "CSV", csv_bytes(rows), file_name=f"{key}.csv", mime="text/csv", key=f"{key}_csv"
    )
