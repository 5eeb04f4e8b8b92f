"""The Retraining page's Datasets section in headless Chromium: an operator builds a dataset
from logged traffic (a real `herd dashboard`, real PostgreSQL) and sees the cleaning report,
rows removed or rewritten per step, and the splits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import text

from app.control.accounts import Accounts, Role
from app.db.database import Database
from tests.analytics_data import insert_messages, insert_requests, request_row
from tests.browser_harness import chromium_page, start_dashboard
from tests.conftest import stop_process
from tests.test_browser import CHROMIUM, shot

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
    pytest.mark.timeout(600),
]

# Logged (prompt, answer) pairs, each fault once: the report must count each.
TRAFFIC = [
    ("How tall is Mont Blanc?", "About 4,806 metres."),
    ("How tall is Mont Blanc?", "About 4,806 metres."),  # exact duplicate
    ("Mail me the answer at jane@example.com please", "Sure, here it is."),  # PII
    ("Write a poem about the sea", "I'm sorry, but I can't help with that."),  # refusal
    ("What is the boiling point of water?", ""),  # empty answer
    ("Name a prime number above ten", "Eleven."),
    ("Why is the sky blue during the day?", "Rayleigh scattering."),
    ("What colour is a ripe banana?", "Yellow."),
]
# step: (rows in, removed, changed), as the page must show them.
EXPECTED = {
    "empty_answer": (8, 1, 0),
    "refusal": (7, 1, 0),
    "pii_redaction": (6, 0, 1),
    "exact_duplicate": (6, 1, 0),
    "near_duplicate": (5, 0, 0),
}


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page() as page:
        yield page


def _log(database: Database) -> None:
    now = datetime.now(UTC)
    rows = [
        request_row(now - timedelta(minutes=30 - i), session_id=f"s{i}")
        for i in range(len(TRAFFIC))
    ]
    insert_requests(database.engine, rows)
    insert_messages(
        database.engine,
        [
            {"request_id": r["id"], "prompt": [{"role": "user", "content": p}], "response": a}
            for r, (p, a) in zip(rows, TRAFFIC, strict=True)
        ],
    )


def _row_cells(page: Page, step: str) -> list[str]:
    """The cleaning report's cells in the row of one step (the grid's accessible table)."""
    cell = page.get_by_role("gridcell", name=step, exact=True, include_hidden=True)
    expect(cell).to_have_count(1)
    row = page.get_by_role("row", include_hidden=True).filter(has=cell)
    return [c.strip() for c in row.get_by_role("gridcell", include_hidden=True).all_text_contents()]


def test_operator_builds_a_dataset_and_sees_its_cleaning_report_and_splits(
    page: Page, database: Database, herd_env: dict[str, str]
) -> None:
    _log(database)
    Accounts(database.engine).add("olga", "operator password", Role.OPERATOR)
    dashboard, url = start_dashboard(herd_env)
    try:
        page.goto(url)
        page.get_by_role("textbox", name="Operator name").fill("olga")
        page.get_by_role("textbox", name="Password").fill("operator password")
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("link", name="Retraining").click()
        expect(page.get_by_role("heading", name="Datasets", exact=True)).to_be_visible()
        expect(page.get_by_text("No datasets yet.")).to_be_visible()
        form = page.get_by_test_id("stForm")
        form.get_by_role("textbox", name="Name", exact=True).fill("browser-set")
        form.get_by_role("textbox", name="Train,validation,test").fill("0.6,0.2,0.2")
        form.get_by_role("button", name="Build dataset").click()
        built = page.get_by_text("Built dataset 'browser-set': 5 rows.")
        expect(built).to_be_visible()
        expect(page.get_by_text("Rows removed per step").first).to_be_visible()
        built.scroll_into_view_if_needed()
        shot(page, "datasets-1-built")
        for step, (rows_in, removed, changed) in EXPECTED.items():
            cells = _row_cells(page, step)
            assert cells[:4] == [step, str(rows_in), str(removed), str(changed)], cells
        with database.engine.connect() as conn:
            rows, splits = conn.execute(
                text("SELECT rows, split_rows FROM datasets WHERE name = 'browser-set'")
            ).one()
        assert rows == 5 and sum(splits.values()) == 5
        shown = ", ".join(f"{k} {v}" for k, v in splits.items())
        expect(page.get_by_text(f"5 rows ({shown}), seed 0")).to_be_visible()
    finally:
        stop_process(dashboard)
