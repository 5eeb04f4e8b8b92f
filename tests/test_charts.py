"""The figures the chart helpers build, as a person reads them: gaps where there was no
traffic, rate axes within 0..100 %, a note instead of empty axes, a visible Wilson band, a
legend under the plot, and tiles whose values fit their tile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.analytics.scope import Scope
from app.analytics.units import format_value
from app.ui import charts
from app.ui.analytics_widgets import TILES_PER_ROW
from app.ui.evaluation_charts import pareto_scatter
from app.ui.time_grid import TimeGrid

START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
# A 10-minute scope charted per minute: bins 10:00 .. 10:09.
GRID = TimeGrid(START, START + 10 * MINUTE, MINUTE)


def _row(minute: int, model: str = "m.gguf", **values: Any) -> dict[str, Any]:
    return {"t": START + minute * MINUTE, "model": model, **values}


def _trace(fig: Any, name: str) -> Any:
    (trace,) = [t for t in fig.data if t.name == name]
    return trace


def test_a_bin_without_rows_is_a_gap_in_each_models_line() -> None:
    rows = [
        _row(0, p95=100.0),
        _row(1, p95=110.0),
        _row(4, p95=120.0),
        _row(4, "other.gguf", p95=50.0),
    ]
    fig = charts.lines(rows, {"p95": "p95"}, title="Latency", y_title="ms", grid=GRID)
    first, other = _trace(fig, "m.gguf p95"), _trace(fig, "other.gguf p95")
    # Every bin of the period is on the axis; the bins without rows are gaps, per model.
    assert list(first.x) == GRID.times()
    assert list(first.y) == [100.0, 110.0, None, None, 120.0, None, None, None, None, None]
    assert list(other.y) == [None] * 4 + [50.0] + [None] * 5
    assert first.connectgaps is False and other.connectgaps is False
    assert list(fig.layout.xaxis.range) == [START, START + 10 * MINUTE]


def test_counts_read_zero_in_a_bin_without_rows() -> None:
    rows = [_row(0, requests=3), _row(2, requests=1)]
    fig = charts.lines(rows, {"": "requests"}, title="Requests", y_title="", grid=GRID, empty_bin=0)
    assert list(fig.data[0].y) == [3, 0, 1, 0, 0, 0, 0, 0, 0, 0]


def test_without_a_grid_gaps_are_found_from_the_rows() -> None:
    rows = [_row(0, v=1.0), _row(1, v=2.0), _row(5, v=3.0)]
    fig = charts.lines(rows, {"": "v"}, title="", y_title="")
    assert list(fig.data[0].y) == [1.0, 2.0, None, None, None, 3.0]


def test_grids_follow_the_bins_of_the_series_queries() -> None:
    scope = Scope(start=START + 37 * MINUTE, end=START + timedelta(days=1, minutes=37))
    grid = charts.series_grid(scope)  # hourly bins over a day, aligned on whole hours
    assert grid.step == timedelta(hours=1)
    assert grid.times()[0] == START and len(grid.times()) == 25
    assert charts.engagement_grid(scope).step == timedelta(hours=1)


@pytest.mark.parametrize(
    ("values", "top"),
    [
        ([0.0, 0.0], 1.0),  # nothing happened: the whole 0..100 % axis
        ([0.004, 0.012], 0.02),  # 1.2 % errors are not a flat line at the bottom
        ([0.3, None, 0.45], 0.5),
        ([0.6, 1.0], 1.0),  # never past 100 %
    ],
)
def test_rate_axes_stay_within_0_and_100_percent(values: list[float | None], top: float) -> None:
    rows = [_row(i, rate=v) for i, v in enumerate(values)]
    fig = charts.lines(
        rows, {"": "rate"}, title="Regenerate rate", y_title="", percent=True, grid=GRID
    )
    low, high = fig.layout.yaxis.range
    assert (low, high) == (0.0, top)
    assert 0.0 <= low < high <= 1.0
    assert fig.layout.yaxis.tickformat == ".0%"


def test_count_axes_start_at_zero() -> None:
    zeros = charts.lines([_row(0, n=0), _row(1, n=0)], {"": "n"}, title="", y_title="")
    assert list(zeros.layout.yaxis.range) == [0, 1]  # not Plotly's -1..1 around a flat zero
    some = charts.lines([_row(0, n=5), _row(1, n=7)], {"": "n"}, title="", y_title="")
    assert some.layout.yaxis.rangemode == "tozero"


@pytest.mark.parametrize(
    "rows",
    [
        [],
        # Sessions that started but none ended yet: every share is None.
        [_row(0, one_turn_share=None), _row(1, one_turn_share=None)],
    ],
)
def test_a_chart_without_data_says_so_instead_of_drawing_empty_axes(
    rows: list[dict[str, Any]],
) -> None:
    fig = charts.lines(
        rows,
        {"": "one_turn_share"},
        title="Sessions abandoned after one turn",
        y_title="",
        percent=True,
        grid=GRID,
    )
    assert not charts.has_data(fig)
    assert len(fig.data) == 0
    assert [a.text for a in fig.layout.annotations] == [charts.NO_DATA]
    assert fig.layout.xaxis.visible is False and fig.layout.yaxis.visible is False
    assert fig.layout.title.text == "Sessions abandoned after one turn"


def test_every_helper_has_the_no_data_note() -> None:
    empty_band = charts.band(
        [_row(0, ratio=None, low=None, high=None, ratings=0)],
        "ratio",
        "low",
        "high",
        title="Thumbs-up",
        y_title="",
    )
    empty_bars = charts.bars([], "step", "removed", title="Rows removed", y_title="rows")
    empty_pareto = pareto_scatter(
        [{"model": "a", "size": 1, "ppl": None}], "size", "ppl",
        title="Perplexity", x_title="GB", y_title="ppl",
    )  # fmt: skip
    for fig in (empty_band, empty_bars, empty_pareto):
        assert not charts.has_data(fig)
        assert [a.text for a in fig.layout.annotations] == [charts.NO_DATA]


def test_the_wilson_band_is_a_filled_area_and_a_lone_point_gets_error_bars() -> None:
    rows = [
        _row(0, ratio=0.6, low=0.3, high=0.8, ratings=5),
        _row(1, ratio=0.5, low=0.2, high=0.7, ratings=6),
        _row(2, ratio=0.4, low=0.1, high=0.75, ratings=4),
        _row(6, ratio=0.5, low=0.1, high=0.9, ratings=2),  # alone: no band of any width
    ]
    fig = charts.band(rows, "ratio", "low", "high", title="Thumbs-up", y_title="", grid=GRID)
    area, line = fig.data
    assert area.fill == "toself" and area.fillcolor and "0.2" in area.fillcolor
    # The band's outline: up along the highs of bins 0-2, back along their lows.
    assert list(area.y) == [0.8, 0.7, 0.75, 0.1, 0.2, 0.3, None]
    assert list(line.y)[:3] == [0.6, 0.5, 0.4] and line.y[3] is None  # a gap, no line
    assert line.error_y.visible is True
    plus, minus = list(line.error_y.array), list(line.error_y.arrayminus)
    assert plus[6] == pytest.approx(0.4) and minus[6] == pytest.approx(0.4)
    assert plus[:3] == [None, None, None]  # the banded points need no bars
    assert list(fig.layout.yaxis.range) == [0.0, 1.0]


def test_legends_sit_under_the_plot() -> None:
    rows = [_row(0, "a.gguf", p95=1.0), _row(0, "b.gguf", p95=2.0)]
    fig = charts.lines(rows, {"p95": "p95"}, title="Latency", y_title="ms", grid=GRID)
    assert fig.layout.legend.orientation == "h"
    assert fig.layout.legend.y < 0 and fig.layout.legend.yanchor == "top"


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (3170.4, "ms", "3.17 s"),
        (12138.0, "ms", "12.1 s"),
        (870.2, "ms", "870 ms"),
        (57, "count", "57"),
        (1_234_567, "count", "1.23M"),
        (0.026, "rate", "2.6%"),
        (42.25, "per_s", "42.2"),
        (1.26, "per_min", "1.3"),
        (None, "ms", "-"),
    ],
)
def test_tile_values_are_short(value: float | None, unit: str, shown: str) -> None:
    assert format_value(value, unit) == shown
    assert len(shown) <= 7  # fits a tile a quarter of the page wide at 1280 px


def test_tiles_come_four_a_row() -> None:
    from streamlit.testing.v1 import AppTest

    def page() -> None:
        from dataclasses import dataclass

        from app.ui.analytics_widgets import tile_row

        @dataclass
        class Tile:
            label: str
            value: float | None
            previous: float | None
            unit: str
            higher_is_better: bool
            help: str
            change: float | None = None

        tile_row([Tile(f"tile {i}", 3170.0, 3000.0, "ms", False, "h") for i in range(8)])

    app = AppTest.from_function(page).run()
    assert not app.exception
    assert TILES_PER_ROW == 4
    # Two rows of four, each tile a quarter of the page (not eight eighths in one row).
    assert [c.weight for c in app.columns] == [0.25] * 8
    assert [m.value for m in app.metric] == ["3.17 s"] * 8
