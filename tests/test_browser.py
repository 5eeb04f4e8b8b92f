"""The dashboard as a person uses it: headless Chromium (Debian's /usr/bin/chromium driven
by Playwright) against a real `herd up --demo`. Screenshots of each step go to
test-artifacts/browser/."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import REPO_ROOT, free_port, run_herd
from tests.test_up import HerdUp

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = REPO_ROOT / "test-artifacts" / "browser"
# Streamlit reruns and a CPU-only worker load take their time on 2 shared cores.
STEP_MS = 60_000
WORKER_READY_MS = 180_000

expect.set_options(timeout=STEP_MS)

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
    pytest.mark.timeout(600),
]


@dataclass
class Herd:
    dashboard: str
    gateway: str
    admin_password: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    tmp = tmp_path_factory.mktemp("browser")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}
    env.update(
        HERD_HOME=str(tmp / "home"),
        HERD_MODELS_DIR=str(tmp / "models"),
        HERD_DASHBOARD_PORT=str(port),
        HERD_SUPERVISOR_PORT=str(free_port()),
        HERD_GATEWAY_PORT=str(free_port()),
    )
    up = HerdUp(env, "--demo")
    try:
        output = up.wait_for("herd is up")
        password = re.search(r"'admin' with password (\S+)", output)
        gateway = re.search(r"^gateway: +(http\S+)/v1", output, re.MULTILINE)
        assert password and gateway, output
        yield Herd(f"http://127.0.0.1:{port}", gateway.group(1), password.group(1), env)
        up.interrupt()
    finally:
        up.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(STEP_MS)
    tab = context.new_page()
    yield tab
    context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def log_in(page: Page, herd: Herd, name: str, password: str) -> None:
    page.goto(herd.dashboard)
    page.get_by_role("textbox", name="Operator name").fill(name)
    # Streamlit's password input has a "Show password" button too: name the textbox.
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def open_page(page: Page, title: str) -> None:
    page.get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()


def test_wrong_password_shows_a_clear_message(page: Page, herd: Herd) -> None:
    log_in(page, herd, "admin", "not the password")
    expect(page.get_by_text("Wrong operator name or password.")).to_be_visible()
    expect(page.get_by_role("link", name="Deployments")).to_have_count(0)
    shot(page, "01-wrong-password")


def test_viewer_cannot_change_deployments(page: Page, herd: Herd) -> None:
    added = run_herd(
        "users", "add", "vera", "--role", "viewer", "--password-stdin",
        env=herd.env, stdin="viewer password\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    log_in(page, herd, "vera", "viewer password")
    expect(page.get_by_text("Logged in as")).to_be_visible()
    open_page(page, "Deployments")
    expect(page.get_by_role("heading", name="Status")).to_be_visible()
    expect(page.get_by_role("button", name="Deploy")).to_have_count(0)
    expect(page.get_by_text("Deploy a model")).to_have_count(0)
    shot(page, "02-viewer-deployments")


def test_admin_deploys_the_demo_model_and_sees_the_worker_ready(page: Page, herd: Herd) -> None:
    # `herd up --demo` already serves alias "demo"; the admin deploys it again as "smol".
    log_in(page, herd, "admin", herd.admin_password)
    expect(page.get_by_text("Logged in as")).to_be_visible()
    shot(page, "03-admin-overview")
    open_page(page, "Deployments")
    page.get_by_text("Deploy a model").click()  # folded: a deployment exists
    page.get_by_role("textbox", name="Alias").fill("smol")
    shot(page, "04-deploy-form")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.get_by_text("Deploy: done.")).to_be_visible()

    def live_workers() -> int:
        models = httpx.get(f"{herd.gateway}/v1/models", timeout=5).json()["data"]
        return sum(m["live_workers"] for m in models if m["id"] == "smol")

    deadline_ms = WORKER_READY_MS
    while live_workers() < 1 and deadline_ms > 0:
        page.wait_for_timeout(1000)
        deadline_ms -= 1000
    assert live_workers() == 1, "the smol worker did not become ready"
    # What the person sees: the status table, refreshed in place, shows the worker ready.
    # The tables draw on a canvas; their accessible copy holds the cells' text.
    expect(page.get_by_role("heading", name="Workers")).to_be_visible()
    ready_cell = page.get_by_role("gridcell", name="ready", exact=True, include_hidden=True)
    expect(ready_cell.first).to_be_attached(timeout=WORKER_READY_MS)
    shot(page, "05-worker-ready")


@pytest.mark.skipif(not (REPO_ROOT / "pages" / "chat.py").exists(), reason="no Chat page yet")
def test_end_user_chats_votes_down_and_monitoring_counts_it(page: Page, herd: Herd) -> None:
    # Runs after the deploy test above (same `herd up`): the demo alias is served.
    page.goto(herd.dashboard)
    page.get_by_role("link", name="Chat").click()
    expect(page.get_by_role("heading", name="Chat", exact=True)).to_be_visible()
    page.get_by_role("textbox").last.fill("Name one fruit.")
    page.keyboard.press("Enter")
    expect(page.get_by_text("Name one fruit.")).to_be_visible()
    shot(page, "06-chat-question")
    thumbs_down = page.get_by_role("radio", name="Thumbs down")
    expect(thumbs_down.first).to_be_visible(timeout=WORKER_READY_MS)
    shot(page, "07-chat-answer")
    thumbs_down.first.click()
    page.get_by_role("textbox", name="Comment (optional)").fill("too short, browser test")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_text("Feedback saved with your comment.")).to_be_visible()
    shot(page, "08-chat-thumbs-down")

    log_in(page, herd, "admin", herd.admin_password)
    open_page(page, "Feedback review")
    # Thumbs-down conversations are listed by default, labelled with their comment.
    expect(page.get_by_text(re.compile("too short, browser test")).first).to_be_visible()
    shot(page, "09-feedback-review")
    open_page(page, "Monitoring")
    page.get_by_role("tab", name=re.compile("Engagement")).click()
    expect(page.get_by_text(re.compile("Thumbs-up ratio")).first).to_be_visible()
    # The one rated answer is counted: every answer rated, none of them thumbs up.
    metrics = page.get_by_test_id("stMetric")
    expect(metrics.filter(has_text="Feedback rate")).to_contain_text("100.0%")
    expect(metrics.filter(has_text="Thumbs up")).to_contain_text("0.0%")
    shot(page, "10-monitoring-engagement")


def test_admin_disables_a_user_whose_session_then_ends(
    page: Page, browser: Browser, herd: Herd
) -> None:
    added = run_herd(
        "users", "add", "dora", "--role", "operator", "--password-stdin",
        env=herd.env, stdin="dora password\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    dora_context = browser.new_context(viewport={"width": 1400, "height": 1000})
    dora_context.set_default_timeout(STEP_MS)
    dora = dora_context.new_page()
    try:
        log_in(dora, herd, "dora", "dora password")
        expect(dora.get_by_text("Logged in as")).to_be_visible()
        open_page(dora, "Models")

        log_in(page, herd, "admin", herd.admin_password)
        open_page(page, "Users")
        page.get_by_role("combobox", name=re.compile("Account")).click()
        page.get_by_role("option", name="dora", exact=True).click()
        expect(page.get_by_text("dora: operator, enabled")).to_be_visible()
        page.get_by_role("button", name="Disable", exact=True).click()
        expect(page.get_by_text("Disable 'dora': done.")).to_be_visible()
        shot(page, "20-users-disable")

        # Dora's next page run ends her session.
        dora.get_by_role("link", name="Deployments").click()
        expect(dora.get_by_text("Your account has been disabled")).to_be_visible()
        expect(dora.get_by_role("button", name="Log in")).to_be_visible()
        expect(dora.get_by_role("link", name="Deployments")).to_have_count(0)
        shot(dora, "21-disabled-user-logged-out")

        open_page(page, "Audit")
        expect(page.get_by_text("Latest: user.disable by admin via page (users).")).to_be_visible()
        shot(page, "22-audit")
    finally:
        dora_context.close()
