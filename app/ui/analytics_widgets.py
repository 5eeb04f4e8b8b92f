"""Widgets the analytics pages share: the period and filter pickers, tiles, chart blocks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from functools import partial
from typing import Any

import streamlit as st

from app.analytics.scope import RANGE_PRESETS, Scope
from app.analytics.summary import Tile
from app.analytics.traffic import DEFAULT_CLASSES, TrafficClass, parse_classes
from app.analytics.units import format_exact, format_value
from app.analytics.versions import FilterOptions
from app.ui import reads
from app.ui.charts import PLOTLY_CONFIG, csv_bytes, has_data, lines

RANGES = {p.label: p.span for p in RANGE_PRESETS}
ANY = "(any)"


def period_picker(key: str, default: str = "Last day") -> tuple[datetime, datetime]:
    """A time range: one of RANGES ending now, or custom dates (UTC)."""
    choices = [*RANGES, "Custom"]
    choice = st.selectbox("Time range", choices, index=choices.index(default), key=f"{key}_range")
    # Pinned for a few seconds, so the reruns of one click ask for the same range (cached).
    now = reads.now(key)
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
    return Scope(
        start=start,
        end=end,
        alias=None if alias == ANY else alias,
        model_id=models[model],
        worker_id=None if worker == ANY else int(worker),
        classes=class_picker(key),
    )


# Tiles per row: each tile keeps about a quarter of the page, so its value fits at 1280 px.
TILES_PER_ROW = 4


def class_picker(key: str) -> tuple[TrafficClass, ...]:
    """The traffic classes counted: live always, batch and synthetic when picked."""
    others = [c for c in TrafficClass if c not in DEFAULT_CLASSES]
    extra = st.multiselect(
        "Also count",
        others,
        format_func=lambda c: f"{c.value} traffic",
        key=f"{key}_classes",
        help="Every number counts live traffic (end users and API clients). Batch lines "
        "and synthetic demo traffic are no users: add them here to see them too.",
    )
    return parse_classes([*DEFAULT_CLASSES, *extra])


def uncounted_note(scope: Scope) -> None:
    """A note naming the calls in range that the chosen classes leave out."""
    left_out = {
        c: n for c, n in reads.requests_by_class(scope).items() if c not in scope.classes and n
    }
    if left_out:
        calls = ", ".join(f"{n:,} {c.value}" for c, n in left_out.items())
        st.caption(f"Not counted: {calls} calls in this period (add them with 'Also count').")


def tile_row(tiles: Sequence[Tile]) -> None:
    """Metric tiles with the change against the previous period, TILES_PER_ROW a row."""
    for first in range(0, len(tiles), TILES_PER_ROW):
        row = tiles[first : first + TILES_PER_ROW]
        for column, tile in zip(st.columns(TILES_PER_ROW), row, strict=False):
            _tile(column, tile)


def _tile(column: Any, tile: Tile) -> None:
    change = tile.change
    delta = None
    if change is not None:
        delta = f"{change:+.1%}" if tile.unit == "rate" else format_value(change, tile.unit)
        if change > 0 and not delta.startswith("+"):
            delta = "+" + delta
    shown = format_value(tile.value, tile.unit)
    exact = format_exact(tile.value, tile.unit)
    column.metric(
        tile.label,
        shown,
        delta=delta,
        delta_color="normal" if tile.higher_is_better else "inverse",
        help=f"{tile.help}{'' if exact == shown else f' ({exact})'}. "
        f"Previous period: {format_value(tile.previous, tile.unit)}",
    )


def line_chart(
    rows: Sequence[dict[str, Any]], series: dict[str, str], key: str, **options: Any
) -> None:
    """chart() of charts.lines(rows, series, **options): a line per series column."""
    chart(lines(rows, series, **options), rows, key)


def chart(fig: Any, rows: Sequence[dict[str, Any]], key: str) -> None:
    """A Plotly chart (PNG from its modebar) with a CSV download of its data; a note in its
    place when the period has nothing to draw."""
    if not rows or not has_data(fig):
        title = fig.layout.title.text if fig.layout.title.text else "This chart"
        st.info(f"{title}: no data yet in this period.", icon=":material/bar_chart:")
        return
    st.plotly_chart(fig, config=PLOTLY_CONFIG, key=f"{key}_chart")
    # The CSV is written when the button is clicked, not on every run of the page.
    st.download_button(
        "CSV", partial(csv_bytes, rows), file_name=f"{key}.csv", mime="text/csv", key=f"{key}_csv"
    )
