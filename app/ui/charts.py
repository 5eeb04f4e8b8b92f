"""Plotly figures and CSV for the analytics pages: one line per model, exact hover values."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import plotly.graph_objects as go

# The modebar's camera button downloads a PNG of the chart.
PLOTLY_CONFIG = {
    "displaylogo": False,
    "toImageButtonOptions": {"format": "png", "scale": 2, "filename": "herd-chart"},
}


# A chart with a single time point gets this much room either side, so Plotly does not zoom
# into microseconds around it.
SPARSE_PAD = timedelta(hours=1)


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
) -> Any:
    """One trace per (group value, series): series maps a legend suffix to a column."""
    fig = go.Figure()
    number = "%{y:.2%}" if percent else "%{y:,.2f}"
    for name, items in _groups(rows, group).items():
        for suffix, column in series.items():
            label = f"{name} {suffix}".strip()
            fig.add_trace(
                go.Scatter(
                    x=[r["t"] for r in items],
                    y=[r.get(column) for r in items],
                    mode="lines+markers",
                    name=label,
                    hovertemplate=f"{label}<br>%{{x|%Y-%m-%d %H:%M}}<br>{number}<extra></extra>",
                )
            )
    _pad_sparse_time(fig, [r["t"] for r in rows])
    return _layout(fig, title, y_title, percent)


def band(
    rows: Sequence[dict[str, Any]],
    value: str,
    low: str,
    high: str,
    *,
    title: str,
    y_title: str,
    group: str = "model",
) -> Any:
    """A rate per group with its confidence band shaded behind it."""
    fig = go.Figure()
    for name, items in _groups(rows, group).items():
        items = [r for r in items if r.get(value) is not None]
        x = [r["t"] for r in items]
        fig.add_trace(
            go.Scatter(
                x=x + x[::-1],
                y=[r[high] for r in items] + [r[low] for r in items][::-1],
                fill="toself",
                opacity=0.2,
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                name=f"{name} 95% CI",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[r[value] for r in items],
                mode="lines+markers",
                name=name,
                customdata=[[r[low], r[high], r.get("ratings")] for r in items],
                hovertemplate=(
                    f"{name}<br>%{{x|%Y-%m-%d %H:%M}}<br>%{{y:.2%}} "
                    "(95% CI %{customdata[0]:.2%} - %{customdata[1]:.2%}, "
                    "%{customdata[2]} ratings)<extra></extra>"
                ),
            )
        )
    _pad_sparse_time(fig, [r["t"] for r in rows if r.get(value) is not None])
    return _layout(fig, title, y_title, True)


def bars(rows: Sequence[dict[str, Any]], x: str, y: str, *, title: str, y_title: str) -> Any:
    fig = go.Figure(
        go.Bar(
            x=[r[x] for r in rows],
            y=[r[y] for r in rows],
            hovertemplate="%{x}<br>%{y:,.4g}<extra></extra>",
        )
    )
    return _layout(fig, title, y_title, False)


def _pad_sparse_time(fig: Any, times: Sequence[Any]) -> None:
    """Give a chart whose points share one time a readable span around it."""
    distinct = {t for t in times if isinstance(t, datetime)}
    if len(distinct) == 1:
        (t,) = distinct
        fig.update_xaxes(range=[t - SPARSE_PAD, t + SPARSE_PAD], tickformat="%H:%M\n%b %d")


def _layout(fig: Any, title: str, y_title: str, percent: bool) -> Any:
    fig.update_layout(
        title=title,
        yaxis_title=y_title,
        hovermode="closest",
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h"},
        height=320,
    )
    if percent:
        fig.update_yaxes(tickformat=".0%")
    return fig


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
