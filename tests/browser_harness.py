"""What the Chromium tests of single pages share: a fresh page, and a real `herd dashboard`
process started on a free port and waited for until it answers."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from playwright.sync_api import Page, expect, sync_playwright

from app.control.accounts import Accounts, Role
from app.db.database import Database
from tests.conftest import free_port, stop_process
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, SHOTS, STEP_MS

DASHBOARD_START_S = 120


@contextmanager
def chromium_page() -> Iterator[Page]:
    """A page of its own headless Chromium, with the browser tests' viewport and step timeout."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(STEP_MS)
        yield context.new_page()
        context.close()
        chromium.close()


def start_dashboard(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """`herd dashboard` with env, once its health check answers: the process and its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "dashboard", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + DASHBOARD_START_S
    while True:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "no dashboard"
        time.sleep(0.5)


def log_in_at(page: Page, url: str, name: str, password: str) -> None:
    """Open the dashboard at url and log in as name."""
    page.goto(url)
    page.get_by_role("textbox", name="Operator name").fill(name)
    # Streamlit's password input has a "Show password" button too: name the textbox.
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Log in").click()


@contextmanager
def logged_in_viewer(page: Page, database: Database, env: dict[str, str]) -> Iterator[str]:
    """A `herd dashboard` with env, page logged in as a new viewer; yields its URL and stops
    the dashboard after."""
    Accounts(database.engine).add("vera", "viewer password", Role.VIEWER)
    dashboard, url = start_dashboard(env)
    try:
        log_in_at(page, url, "vera", "viewer password")
        yield url
    finally:
        stop_process(dashboard)


def settled(page: Page) -> None:
    """Wait until the page's script run has ended: a widget changed while a run is still
    drawing the page can be drawn again without the change."""
    expect(page.locator("[data-testid='stApp']")).to_have_attribute(
        "data-test-script-state", "notRunning"
    )


def choose(page: Page, label: str, option: str, tries: int = 3) -> None:
    """Pick one option of a Streamlit multiselect or selectbox by typing to filter it, and
    check the widget shows it (a rerun under load can redraw a form without the pick)."""
    box = page.get_by_role("combobox", name=re.compile(label))
    widget = page.locator("[data-testid='stMultiSelect'], [data-testid='stSelectbox']").filter(
        has=box
    )
    for attempt in range(tries):
        settled(page)
        box.click()
        box.fill(option)
        page.get_by_role("option", name=option, exact=True).click()
        page.keyboard.press("Escape")
        try:
            # A selectbox shows its pick as the box's value, a multiselect as a tag beside it.
            if widget.get_attribute("data-testid") == "stSelectbox":
                expect(box).to_have_value(option, timeout=5_000)
            else:
                expect(widget).to_contain_text(option, timeout=5_000)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise
