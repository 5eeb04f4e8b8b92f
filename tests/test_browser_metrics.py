"""Monitoring's tiles, read off the page in headless Chromium, are the numbers `herd metrics`
prints for the same range: for the last day (rollups for whole hours, raw rows at the ends)
and the last hour (raw rows), with batch and synthetic calls in the database that neither
counts by default."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.analytics.catalog import TILES
from app.analytics.units import format_value
from app.db.database import Database
from tests.analytics_data import add_model, insert_feedback, insert_requests, request_row
from tests.browser_harness import chromium_page, logged_in_viewer
from tests.conftest import run_herd
from tests.test_browser import CHROMIUM, shot

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
    pytest.mark.timeout(600),
]

# Each tile's label and value as the page shows them.
TILE_TEXTS = """
() => Array.from(document.querySelectorAll('[data-testid="stMetric"]')).map(tile => [
  tile.querySelector('[data-testid="stMetricLabel"]').innerText.trim(),
  tile.querySelector('[data-testid="stMetricValue"]').innerText.trim()])
"""


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page() as page:
        page.set_viewport_size({"width": 1440, "height": 1000})
        yield page


def _traffic(database: Database) -> None:
    """A day of live calls (slow ones hours ago, fast ones in the last hour, errors, 4xx,
    ratings) and, at the same times, batch lines and synthetic calls that are far slower."""
    model = add_model(database.engine, "chat-v1.gguf")
    now = datetime.now(UTC)
    rows = []
    for i, minutes in enumerate([3, 8, 14, 25, 33, 47, 70, 130, 300, 600, 900, 1300]):
        at = now - timedelta(minutes=minutes)
        rows.append(request_row(at, model_id=model, ttft_ms=200.0 + 900 * (minutes > 60) + i,
                                total_ms=2800.0 + 300 * i))  # fmt: skip
        rows.append(request_row(at, model_id=model, batch_id="batch_t", total_ms=12_600.0))
        rows.append(request_row(at, model_id=model, synthetic=True, total_ms=40_000.0))
    rows[3].update(status="error", http_status=502)
    rows.append(request_row(now - timedelta(minutes=9), alias="nope", status="rejected",
                            http_status=404, ttft_ms=None, total_ms=1.0))  # fmt: skip
    insert_requests(database.engine, rows)
    insert_feedback(
        database.engine,
        [
            {"request_id": rows[0]["id"], "rating": 1, "user_id": "u"},
            {"request_id": rows[6]["id"], "rating": -1, "user_id": "u"},
            {"request_id": rows[1]["id"], "rating": 1, "user_id": "u"},  # a batch line's
        ],
    )


def _cli_tiles(herd_env: dict[str, str], range_key: str) -> dict[str, str]:
    done = run_herd("metrics", "--range", range_key, "--json", env=herd_env)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)["metrics"]
    return {m["label"]: format_value(m["value"], m["unit"]) for m in metrics.values()}


def _page_tiles(page: Page) -> dict[str, str]:
    return {label: value for label, value in page.evaluate(TILE_TEXTS)}


def test_monitoring_tiles_equal_herd_metrics_for_two_ranges(
    page: Page, database: Database, herd_env: dict[str, str]
) -> None:
    _traffic(database)
    with logged_in_viewer(page, database, herd_env):
        page.get_by_role("link", name="Monitoring").click()
        tiles = page.get_by_test_id("stMetric")
        expect(tiles.filter(has_text="Requests")).to_contain_text("13")
        shot(page, "metrics-1-last-day")
        day = _page_tiles(page)
        assert day == _cli_tiles(herd_env, "24h")
        assert set(day) == {m.label for m in TILES}
        # The batch and synthetic calls (12.6 s and 40 s) are in no live number.
        assert float(day["p95 latency"].removesuffix(" s")) < 7  # live calls took <= 6.1 s
        expect(page.get_by_text(re.compile("Not counted: 12 batch, 12 synthetic"))).to_be_visible()

        page.get_by_role("combobox", name=re.compile("Time range")).click()
        page.get_by_role("option", name="Last hour", exact=True).click()
        expect(tiles.filter(has_text="Requests")).to_contain_text("7")
        shot(page, "metrics-2-last-hour")
        hour = _page_tiles(page)
        assert hour == _cli_tiles(herd_env, "1h")
        assert hour["Client errors"] == format_value(1 / 7, "rate")
