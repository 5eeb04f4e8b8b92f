"""Plotly scatter charts of evaluated models with the Pareto front drawn through them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from app.evaluation.pareto import pareto_front
from app.ui.charts import LEGEND_BELOW, no_data


def pareto_scatter(
    rows: Sequence[dict[str, Any]],
    x: str,
    y: str,
    *,
    title: str,
    x_title: str,
    y_title: str,
    maximize_x: bool = False,
) -> Any:
    """Each model a point (x, y); the Pareto-optimal ones joined by a line and marked."""
    points = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    fig = go.Figure()
    if not points:
        return no_data(fig, title)
    front = set(pareto_front([(r[x], r[y]) for r in points], maximize_x=maximize_x))
    fig.add_trace(
        go.Scatter(
            x=[r[x] for r in points],
            y=[r[y] for r in points],
            mode="markers+text",
            text=[r["model"] for r in points],
            textposition="top center",
            marker={
                "size": 12,
                "symbol": ["star" if i in front else "circle" for i in range(len(points))],
            },
            name="models",
            hovertemplate="%{text}<br>"
            + x_title
            + ": %{x:,.4g}<br>"
            + y_title
            + ": %{y:.4f}<extra></extra>",
        )
    )
    on_front = sorted((points[i] for i in front), key=lambda r: r[x])
    fig.add_trace(
        go.Scatter(
            x=[r[x] for r in on_front],
            y=[r[y] for r in on_front],
            mode="lines",
            line={"dash": "dash"},
            name="Pareto front",
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        title=title, xaxis_title=x_title, yaxis_title=y_title, height=420, legend=LEGEND_BELOW
    )
    return fig
