"""Monitoring as a person sees it at 1280 px in headless Chromium (a real `herd dashboard`,
real PostgreSQL): tile values fit their tiles, rate axes stay within 0..100 %, and a chart
with nothing to draw says so instead of showing empty axes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.db.database import Database
from tests.analytics_data import add_model, insert_requests, request_row
from tests.browser_harness import chromium_page, logged_in_viewer
from tests.test_browser import CHROMIUM, shot

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
    pytest.mark.timeout(600),
]

# Any element of a tile whose content is wider than its box: cut ("3,17…") or overflowing.
CUT_TILES = """
() => Array.from(document.querySelectorAll('[data-testid="stMetric"]')).flatMap(tile =>
  [tile, ...tile.querySelectorAll('*')]
    .filter(el => el.scrollWidth > el.clientWidth + 1)
    .map(el => el.textContent))
"""
# The y range of the chart titled title, as Plotly laid it out (Streamlit bolds titles).
Y_RANGE = """
title => Array.from(document.querySelectorAll('.js-plotly-plot'))
  .filter(div => div._fullLayout && div._fullLayout.title.text.includes(title))
  .map(div => div._fullLayout.yaxis.range)
"""


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page() as page:
        page.set_viewport_size({"width": 1280, "height": 1000})
        yield page


def _traffic(database: Database) -> None:
    """Slow answers (p95 over 3 s and 12 s) for six minutes of the last hour, one failed."""
    model = add_model(database.engine, "qwen2.5-0.5b-instruct-q4_k_m.gguf")
    now = datetime.now(UTC)
    rows = [
        request_row(
            now - timedelta(minutes=minute),
            model_id=model,
            ttft_ms=3170.0 + minute,
            total_ms=12138.0 + minute,
            tokens_per_second=1234.5,
        )
        for minute in (5, 6, 7, 20, 21, 40)
    ]
    rows[0].update(status="error", http_status=502)
    insert_requests(database.engine, rows)


def test_tiles_fit_at_1280_px_and_charts_keep_their_bounds(
    page: Page, database: Database, herd_env: dict[str, str]
) -> None:
    _traffic(database)
    with logged_in_viewer(page, database, herd_env):
        page.get_by_role("link", name="Monitoring").click()
        tiles = page.get_by_test_id("stMetric")
        expect(tiles.filter(has_text="p95 latency")).to_contain_text(re.compile(r"\d s"))
        shot(page, "charts-1-tiles-1280")
        assert page.evaluate(CUT_TILES) == []

        page.get_by_role("tab", name=re.compile("Traffic")).click()
        errors = "Errors: server (5xx) and client (4xx)"
        expect(page.get_by_text(errors)).to_be_visible()
        page.get_by_text(errors).scroll_into_view_if_needed()
        shot(page, "charts-2-traffic")
        (low, high), *_ = page.evaluate(Y_RANGE, errors)
        assert 0 <= low < high <= 1, (low, high)

        page.get_by_role("tab", name=re.compile("Engagement")).click()
        # No chat sessions were logged: a note, not axes from -100 % to 400 %.
        note = page.get_by_text("Sessions abandoned after one turn: no data yet in this period.")
        expect(note).to_be_visible()
        note.scroll_into_view_if_needed()
        shot(page, "charts-3-engagement-no-data")
