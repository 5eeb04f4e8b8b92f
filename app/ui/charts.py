"""Plotly figures and CSV for the analytics pages: one line per model, exact hover values.

Every figure follows the same rules, so no page has to remember them: a time bin without
rows is a gap in the line (or a zero, for counts), rates sit on a 0..100 % axis, a chart with
nothing to draw says so instead of showing empty axes, and the legend sits under the plot.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, qualitative

from app.ui.time_grid import (
    TimeGrid,
    engagement_grid,
    implied_grid,
    last_minutes,
    on_grid,
    series_grid,
)

__all__ = [
    "TimeGrid",
    "band",
    "bars",
    "csv_bytes",
    "engagement_grid",
    "has_data",
    "known_models",
    "last_minutes",
    "lines",
    "no_data",
    "series_grid",
]

# The modebar's camera button downloads a PNG of the chart.
PLOTLY_CONFIG = {
    "displaylogo": False,
    "toImageButtonOptions": {"format": "png", "scale": 2, "filename": "herd-chart"},
}

NO_DATA = "No data yet in this period"
# Plotly's own colour sequence, named so that a band can take the colour of its line.
COLORS: list[str] = list(qualitative.Plotly)
DASHES = ("solid", "dash", "dot", "dashdot")

# A chart with a single time point gets this much room either side, so Plotly does not zoom
# into microseconds around it.
SPARSE_PAD = timedelta(hours=1)

# The top of a rate axis: the first of these above the highest value, so 2 % errors are not
# a flat line on a 0..100 % axis, yet the axis never leaves 0..100 %.
RATE_TOPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

HEIGHT_PX = 340
# Under the plot, left-aligned: never over the title, the ticks or the axis labels.
LEGEND_BELOW = {"orientation": "h", "x": 0, "xanchor": "left", "y": -0.15, "yanchor": "top"}
NO_DATA_HEIGHT_PX = 140


def known_models(rows: Sequence[dict[str, Any]], key: str = "model") -> list[dict[str, Any]]:
    """rows without those of calls that reached no model (an unknown alias, a call refused
    before routing): their series read "unknown" and crowd the legend."""
    return [row for row in rows if row.get(key)]


def _groups(rows: Sequence[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(str(row.get(key) or "unknown"), []).append(row)
    return out


def lines(
    rows: Sequence[dict[str, Any]],
    series: dict[str, str],
    *,
    title: str,
    y_title: str,
    group: str = "model",
    percent: bool = False,
    grid: TimeGrid | None = None,
    empty_bin: float | None = None,
) -> Any:
    """One trace per (group value, series): series maps a legend suffix to a column.

    grid: the bins of the query (TimeGrid.of(scope, bin size)); without it the bins are
    inferred from the rows. A bin without a row reads empty_bin: None (a gap in the line)
    for latencies and rates, 0 for counts.
    """
    fig = go.Figure()
    bins = grid or implied_grid(r["t"] for r in rows)
    number = "%{y:.2%}" if percent else "%{y:,.2f}"
    for index, (name, items) in enumerate(_groups(rows, group).items()):
        x, values = on_grid(items, list(series.values()), bins, empty_bin)
        for order, (suffix, column) in enumerate(series.items()):
            label = f"{name} {suffix}".strip()
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=values[column],
                    mode="lines+markers",
                    connectgaps=False,
                    cliponaxis=False,
                    # One colour per model, one dash per series (p50 solid, p95 dashed ...).
                    line={"color": COLORS[index % len(COLORS)], "dash": DASHES[order % 4]},
                    name=label,
                    hovertemplate=f"{label}<br>%{{x|%Y-%m-%d %H:%M}}<br>{number}<extra></extra>",
                )
            )
    if not has_data(fig):
        return no_data(fig, title)
    _time_axis(fig, [r["t"] for r in rows], grid)
    _layout(fig, title, y_title)
    if percent:
        fig.update_yaxes(tickformat=".0%", range=rate_range(_y_values(fig)))
    else:
        _count_axis(fig)
    return fig


def band(
    rows: Sequence[dict[str, Any]],
    value: str,
    low: str,
    high: str,
    *,
    title: str,
    y_title: str,
    group: str = "model",
    grid: TimeGrid | None = None,
) -> Any:
    """A rate per group with its confidence interval: a shaded band over consecutive bins,
    error bars on a point with no neighbour (a band one bin wide has no area)."""
    fig = go.Figure()
    bins = grid or implied_grid(r["t"] for r in rows)
    for index, (name, items) in enumerate(_groups(rows, group).items()):
        color = COLORS[index % len(COLORS)]
        x, v = on_grid(items, [value, low, high, "ratings"], bins)
        for trace in _band_traces(name, color, x, v[value], v[low], v[high], v["ratings"]):
            fig.add_trace(trace)
    if not has_data(fig):
        return no_data(fig, title)
    _time_axis(fig, [r["t"] for r in rows if r.get(value) is not None], grid)
    _layout(fig, title, y_title)
    # An interval of a share can reach both ends: the whole 0..100 % axis.
    fig.update_yaxes(tickformat=".0%", range=[0.0, 1.0])
    return fig


def _band_traces(
    name: str,
    color: str,
    x: list[Any],
    rate: list[Any],
    low: list[Any],
    high: list[Any],
    ratings: list[Any],
) -> list[Any]:
    """One group's traces for band(): the shaded interval where there is one, then the line
    (error bars on its lone points)."""
    shown = [rate[i] is not None and low[i] is not None and high[i] is not None
             for i in range(len(x))]  # fmt: skip
    band_x, band_y, above, below = _interval_outline(x, rate, low, high, shown)
    traces = []
    if band_x:
        red, green, blue = hex_to_rgb(color)
        traces.append(
            go.Scatter(
                x=band_x,
                y=band_y,
                fill="toself",
                fillcolor=f"rgba({red}, {green}, {blue}, 0.2)",
                mode="lines",
                line={"width": 0, "color": color},
                connectgaps=False,
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
                name=f"{name} 95% CI",
            )
        )
    traces.append(
        go.Scatter(
            x=x,
            y=[rate[i] if shown[i] else None for i in range(len(x))],
            mode="lines+markers",
            connectgaps=False,
            cliponaxis=False,
            line={"color": color},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": above,
                "arrayminus": below,
                "visible": any(a is not None for a in above),
                "color": color,
                "width": 6,
            },
            name=name,
            legendgroup=name,
            customdata=[[low[i], high[i], ratings[i]] for i in range(len(x))],
            hovertemplate=(
                f"{name}<br>%{{x|%Y-%m-%d %H:%M}}<br>%{{y:.2%}} "
                "(95% CI %{customdata[0]:.2%} - %{customdata[1]:.2%}, "
                "%{customdata[2]} ratings)<extra></extra>"
            ),
        )
    )
    return traces


def _interval_outline(
    x: list[Any], rate: list[Any], low: list[Any], high: list[Any], shown: list[bool]
) -> tuple[list[Any], list[Any], list[float | None], list[float | None]]:
    """The band's polygon (x, y; runs of consecutive bins, apart by None) and the error bar
    lengths (above, below) of points with no neighbour (a band one bin wide has no area)."""
    band_x: list[Any] = []
    band_y: list[Any] = []
    above: list[float | None] = [None] * len(x)
    below: list[float | None] = [None] * len(x)
    for run in _runs(shown):
        if len(run) == 1:
            (i,) = run
            above[i] = high[i] - rate[i]
            below[i] = rate[i] - low[i]
            continue
        band_x += [x[i] for i in run] + [x[i] for i in reversed(run)] + [None]
        band_y += [high[i] for i in run] + [low[i] for i in reversed(run)] + [None]
    return band_x, band_y, above, below


def bars(rows: Sequence[dict[str, Any]], x: str, y: str, *, title: str, y_title: str) -> Any:
    """One bar per row: rows[x] labels it, rows[y] is its height."""
    fig = go.Figure(
        go.Bar(
            x=[r[x] for r in rows],
            y=[r[y] for r in rows],
            hovertemplate="%{x}<br>%{y:,.4g}<extra></extra>",
        )
    )
    if not has_data(fig):
        return no_data(fig, title)
    _layout(fig, title, y_title)
    _count_axis(fig)
    return fig


def has_data(fig: Any) -> bool:
    """Whether any trace of fig has a value to draw."""
    return any(value is not None for value in _y_values(fig))


def rate_range(values: Iterable[float | None]) -> list[float]:
    """The y range of a rate chart: from 0 to the first of RATE_TOPS above every value."""
    peak = max((v for v in values if v is not None), default=0.0)
    if peak <= 0:
        return [0.0, 1.0]
    return [0.0, next((top for top in RATE_TOPS if peak * 1.05 <= top), 1.0)]


def _y_values(fig: Any) -> list[Any]:
    return [value for trace in fig.data for value in (trace.y or ())]


def _runs(flags: Sequence[bool]) -> list[list[int]]:
    """Index runs of consecutive True flags."""
    runs: list[list[int]] = []
    for i, flag in enumerate(flags):
        if not flag:
            continue
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def no_data(fig: Any, title: str) -> Any:
    """fig emptied, saying there is nothing to show instead of drawing empty axes."""
    fig.data = []
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"},
        height=NO_DATA_HEIGHT_PX,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        annotations=[
            {
                "text": NO_DATA,
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "font": {"size": 14, "color": "gray"},
            }
        ],
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _time_axis(fig: Any, times: Sequence[Any], grid: TimeGrid | None) -> None:
    """The whole period of the query on the x axis (grid, when the page gave it), or a
    readable span around a single point in time."""
    if grid is not None and grid.times():
        fig.update_xaxes(range=[grid.first, grid.end])
        return
    distinct = {t for t in times if isinstance(t, datetime)}
    if len(distinct) == 1:
        (t,) = distinct
        fig.update_xaxes(range=[t - SPARSE_PAD, t + SPARSE_PAD], tickformat="%H:%M\n%b %d")


def _count_axis(fig: Any) -> None:
    """Counts, milliseconds and speeds: from 0 up, never a negative axis."""
    if max((v for v in _y_values(fig) if v is not None), default=0) <= 0:
        fig.update_yaxes(range=[0, 1])
    else:
        fig.update_yaxes(rangemode="tozero")


def _layout(fig: Any, title: str, y_title: str) -> None:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"},
        yaxis_title=y_title,
        hovermode="closest",
        height=HEIGHT_PX,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend=LEGEND_BELOW,
    )


def csv_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    """rows as CSV (UTF-8), columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")
