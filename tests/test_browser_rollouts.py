"""Canary -> promote -> rollback as an operator does it: headless Chromium on the Rollouts
page of a real `herd dashboard`, checked in the database after each click."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.config import Settings
from app.control.accounts import Accounts, Role
from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
from app.db.database import Database
from app.rollouts.actions import Rollouts
from app.store.catalog import ModelStore
from tests.browser_harness import chromium_page, start_dashboard
from tests.conftest import stop_process
from tests.test_browser import CHROMIUM, shot

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
    pytest.mark.timeout(600),
]


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page() as page:
        yield page


@pytest.fixture
def dashboard(
    herd_env: dict[str, str],
    database: Database,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
) -> Iterator[str]:
    store = ModelStore(database.engine, models_dir)
    store.add(tiny_gguf("v1.gguf"))
    store.add(tiny_gguf("v2.gguf"))
    Deployments(database.engine).create(
        DeploymentRequest("smol", ServingSettings("v1.gguf", n_ctx=256), replicas=0)
    )
    Accounts(database.engine).add("olga", "operator password", Role.OPERATOR)
    process, url = start_dashboard(herd_env)
    yield url
    stop_process(process)


def test_operator_canaries_promotes_and_rolls_back_in_the_browser(
    page: Page,
    dashboard: str,
    database: Database,
    settings: Settings,
) -> None:
    rollouts = Rollouts(database.engine, settings)

    def weights() -> dict[str, tuple[int, str]]:
        return {d["model"]: (d["weight"], d["state"]) for d in rollouts.snapshot("smol")}

    page.goto(dashboard)
    page.get_by_role("textbox", name="Operator name").fill("olga")
    page.get_by_role("textbox", name="Password").fill("operator password")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Rollouts").click()
    expect(page.get_by_role("heading", name="Rollouts", exact=True)).to_be_visible()
    page.get_by_role("button", name="Start canary").click()
    expect(page.get_by_text("20% of the traffic")).to_be_visible()
    shot(page, "rollouts-1-canary")
    assert weights() == {"v1.gguf": (100, "active"), "v2.gguf": (25, "active")}

    page.get_by_role("button", name="Promote").click()
    page.get_by_role("button", name="Yes, promote").click()
    expect(page.get_by_text("the canary has all the traffic")).to_be_visible()
    shot(page, "rollouts-2-promoted")
    assert weights() == {"v1.gguf": (0, "active"), "v2.gguf": (100, "active")}

    page.get_by_role("button", name="Roll back").click()
    page.get_by_role("button", name="Yes, roll back").click()
    expect(page.get_by_text("the previous version is back")).to_be_visible()
    shot(page, "rollouts-3-rolled-back")
    assert weights() == {"v1.gguf": (100, "active"), "v2.gguf": (0, "stopped")}
    actions = [(h["action"], h["decided_by"]) for h in rollouts.history("smol")]
    assert actions == [("rollback", "olga"), ("promote", "olga"), ("canary", "olga")]
