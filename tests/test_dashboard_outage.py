"""The real dashboard in headless Chromium while its PostgreSQL stops and starts again: it says
"Database unavailable" instead of a stack trace, and recovers by itself, with no click or
reload. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from app.control.accounts import Accounts, Role
from app.db.database import Database
from tests.conftest import REPO_ROOT, free_port, stop_process
from tests.gateway_harness import embedded_postgres, wait_for
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, SHOTS

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing")
PASSWORD = "a long enough password"


def _dashboard_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_dashboard_says_database_unavailable_and_recovers_by_itself(
    own_postgres: tuple[Path, str], tmp_path: Path
) -> None:
    pgdata, url = own_postgres
    with Database(url) as database:
        Accounts(database.engine).add("vic", PASSWORD, Role.VIEWER)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}
    env.update(HERD_DATABASE_URL=url, HERD_HOME=str(tmp_path / "home"))
    log = (tmp_path / "dashboard.log").open("wb")
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "dashboard", "--port", str(port)],
        env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        wait_for(lambda: _dashboard_up(base), 120, step_s=0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(base)
            page.get_by_role("textbox", name="Operator name").fill("vic")
            page.get_by_role("textbox", name="Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_text("Requests (24 h)")).to_be_visible()

            embedded_postgres(pgdata, "stop")
            # Open the page again in the same browser session (a reload would log out).
            page.get_by_role("link", name="Overview").click()
            unavailable = page.get_by_text("Database unavailable", exact=False)
            expect(unavailable).to_be_visible()
            expect(page.get_by_text("Traceback")).to_have_count(0)
            page.screenshot(path=str(SHOTS / "outage-1-database-unavailable.png"))

            embedded_postgres(pgdata, "start")
            # No click, no reload: the page's own retry brings the figures back.
            expect(page.get_by_text("Requests (24 h)")).to_be_visible(timeout=30_000)
            expect(unavailable).to_have_count(0)
            page.screenshot(path=str(SHOTS / "outage-2-recovered.png"))
            browser.close()
    finally:
        stop_process(dashboard, signal.SIGINT, timeout_s=30)
        log.close()
