"""A batch submitted on the Batches page in headless Chromium runs to the end: a real
`herd dashboard`, a gateway, a real worker on the demo model, the runner job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import text

from app.control.accounts import Accounts, Role
from app.db.database import Database
from tests.batch_harness import ALIAS, batch_gateway, chat_line, start_demo_worker, write_jsonl
from tests.browser_harness import chromium_page, start_dashboard
from tests.conftest import stop_process
from tests.test_browser import CHROMIUM, shot
from tests.worker_process import WorkerLauncher

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
    pytest.mark.timeout(600),
]


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page() as page:
        yield page


def test_operator_submits_a_batch_on_the_page_and_sees_it_complete(
    page: Page, tmp_path: Path, db_url: str, database: Database, models_dir: Path,
    worker_launcher: WorkerLauncher, herd_env: dict[str, str],
) -> None:  # fmt: skip
    start_demo_worker(worker_launcher, database, models_dir)
    Accounts(database.engine).add("olga", "operator password", Role.OPERATOR)
    # The lines name another model: the page's alias field sends them all to ALIAS.
    source = write_jsonl(
        tmp_path / "prompts.jsonl", [chat_line(f"p{i}", model="other") for i in range(3)]
    )
    with batch_gateway(tmp_path, db_url) as gateway:
        gateway.wait_workers(1)
        dashboard, url = start_dashboard({**herd_env, "HERD_GATEWAY_URL": gateway.url})
        try:
            page.goto(url)
            page.get_by_role("textbox", name="Operator name").fill("olga")
            page.get_by_role("textbox", name="Password").fill("operator password")
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("link", name="Batches").click()
            expect(page.get_by_role("heading", name="Batches", exact=True).first).to_be_visible()
            page.locator("input[type=file]").set_input_files(str(source))
            expect(page.get_by_text("prompts.jsonl")).to_be_visible()  # uploaded
            page.get_by_role("textbox", name="Alias (optional)").fill(ALIAS)
            page.get_by_role("button", name="Submit batch").click()
            expect(page.get_by_text("Submitted batch_")).to_be_visible()
            shot(page, "batches-1-submitted")
            expect(page.get_by_text("3/3 lines · 3 completed · 0 failed")).to_be_visible(
                timeout=240_000
            )
            expect(page.get_by_text("completed", exact=True).first).to_be_visible()
            shot(page, "batches-2-completed")
            with page.expect_download() as download:
                page.get_by_role("button", name="Download output (3)").click()
            rows = [
                json.loads(line) for line in Path(download.value.path()).read_text().splitlines()
            ]
            assert sorted(r["custom_id"] for r in rows) == ["p0", "p1", "p2"]
            assert all(r["response"]["body"]["model"] == ALIAS for r in rows)
        finally:
            stop_process(dashboard)
    with database.engine.connect() as conn:
        status, by = conn.execute(text("SELECT status, created_by FROM batches")).one()
    assert (status, by) == ("completed", "olga")
