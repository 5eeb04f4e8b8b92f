"""The A/B chart: each version's thumbs-up ratio with its 95% interval, and p95 latency."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.analytics.versions import VersionStats


def ab_figure(versions: Sequence[VersionStats]) -> Any:
    """Two panels side by side, one bar per version (the baseline first)."""
    names = [v.model or "unknown" for v in versions]
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("Thumbs-up ratio (95% Wilson interval)", "p95 latency")
    )
    ratios = [v.thumbs_up_ratio for v in versions]
    low, high = [], []
    for r, v in zip(ratios, versions, strict=True):
        interval = v.thumbs_up_interval
        low.append(r - interval[0] if r is not None else 0.0)
        high.append(interval[1] - r if r is not None else 0.0)
    fig.add_trace(
        go.Bar(
            x=names,
            y=ratios,
            error_y={"type": "data", "symmetric": False, "array": high, "arrayminus": low},
            customdata=[[v.ratings, v.thumbs_up] for v in versions],
            hovertemplate="%{x}<br>%{y:.1%} of %{customdata[0]} ratings<extra></extra>",
            name="thumbs-up",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=names,
            y=[v.total_p95_ms for v in versions],
            customdata=[v.requests for v in versions],
            hovertemplate="%{x}<br>%{y:,.0f} ms over %{customdata} requests<extra></extra>",
            name="p95 ms",
        ),
        row=1,
        col=2,
    )
    fig.update_yaxes(tickformat=".0%", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="ms", row=1, col=2)
    fig.update_layout(height=380, showlegend=False)
    return fig
