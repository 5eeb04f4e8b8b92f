"""Quantize -> evaluate -> canary as an operator does it: headless Chromium on the Models and
Evaluation pages of a real `herd dashboard`, with real jobs on the demo model (Q4_1 -> Q8_0),
checked in the database after each step."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.config import Settings
from app.control.accounts import Accounts, Role
from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
from app.db.database import Database
from app.evaluation.answers import AnswerStore
from app.evaluation.metrics import Metric
from app.evaluation.store import EvaluationStore
from app.rollouts.actions import Rollouts
from app.store.catalog import ModelStore
from app.store.demo import DEMO_FILE, add_demo_model
from tests.analytics_data import insert_feedback, insert_messages, insert_requests, request_row
from tests.browser_harness import choose, chromium_page, start_dashboard
from tests.conftest import stop_process
from tests.test_browser import CHROMIUM, shot
from tests.test_evaluation import SHORT_TEXT

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
    pytest.mark.timeout(600),
]

VARIANT = "SmolLM2-135M-Instruct.Q8_0.gguf"
# A job on 2 busy cores: quantizing 135M parameters, or measuring two models.
JOB_MS = 300_000


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page() as page:
        yield page


@pytest.fixture
def dashboard(herd_env: dict[str, str], database: Database, models_dir: Path) -> Iterator[str]:
    demo = add_demo_model(ModelStore(database.engine, models_dir))
    Deployments(database.engine).create(
        DeploymentRequest("smol", ServingSettings(demo.name, n_ctx=256), replicas=0)
    )
    Accounts(database.engine).add("olga", "operator password", Role.OPERATOR)
    # One thumbs-up answer: the feedback prompt set the evaluation answers.
    now = datetime.now(UTC)
    liked = request_row(now, alias="smol", model_id=demo.id)
    insert_requests(database.engine, [liked])
    insert_messages(database.engine, [{
        "request_id": liked["id"], "created_at": now,
        "prompt": [{"role": "user", "content": "Name a colour of the sky."}],
        "response": "The sky is blue."}])  # fmt: skip
    insert_feedback(database.engine, [{"request_id": liked["id"], "rating": 1,
                                       "created_at": now, "updated_at": now}])  # fmt: skip
    process, url = start_dashboard(herd_env)
    yield url
    stop_process(process)


def test_operator_quantizes_evaluates_and_canaries_in_the_browser(
    page: Page, dashboard: str, database: Database, settings: Settings, tmp_path: Path
) -> None:
    page.goto(dashboard)
    page.get_by_role("textbox", name="Operator name").fill("olga")
    page.get_by_role("textbox", name="Password").fill("operator password")
    page.get_by_role("button", name="Log in").click()

    # Models page: the demo model (Q4_1) requantized to Q8_0, as a job.
    page.get_by_role("link", name="Models").click()
    expect(page.get_by_role("heading", name="Quantize", exact=True)).to_be_visible()
    choose(page, "File types", "Q8_0")
    page.get_by_text("Allow requantizing an already quantized source").click()
    page.get_by_role("button", name="Start quantizing").click()
    expect(page.get_by_text(re.compile(r"^Started job \d+\.$"))).to_be_visible()
    # The job list refreshes in place until the job has succeeded.
    expect(page.get_by_text(re.compile(r"^Succeeded: ")).first).to_be_visible(timeout=JOB_MS)
    shot(page, "lifecycle-1-quantized")
    store = ModelStore(database.engine, settings.models_path)
    variant = store.get(VARIANT)
    assert variant is not None and variant.status == "valid"
    assert variant.file_type == "Q8_0" and variant.parent_id == store.get(DEMO_FILE).id  # type: ignore[union-attr]

    # Evaluation page: both models measured on a short text, the feedback prompt answered.
    text_file = tmp_path / "short.txt"
    text_file.write_text(SHORT_TEXT, encoding="utf-8")
    page.get_by_role("link", name="Evaluation").click()
    expect(page.get_by_role("heading", name="Evaluation", exact=True)).to_be_visible()
    choose(page, "Models", DEMO_FILE)
    choose(page, "Models", VARIANT)
    page.get_by_role("spinbutton", name="Context (tokens)").fill("64")
    page.get_by_role("spinbutton", name="Threads (0: all)").fill("1")
    page.get_by_role("textbox", name="Evaluation text on the server (optional)").fill(
        str(text_file)
    )
    page.get_by_role("spinbutton", name="Most tokens per answer").fill("12")
    page.get_by_role("button", name="Evaluate").click()
    expect(page.get_by_text(re.compile(r"^Started job \d+\.$"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Succeeded: ")).first).to_be_visible(timeout=JOB_MS)
    results = {r["model"]: r for r in EvaluationStore(database.engine).latest()}
    assert set(results) == {DEMO_FILE, VARIANT}
    assert all(r[Metric.PERPLEXITY.value] > 1 for r in results.values())
    assert results[VARIANT]["settings"]["n_ctx"] == 64

    # A full run of the page shows the results table and the answers side by side.
    page.get_by_role("link", name="Evaluation").click()
    expect(page.get_by_role("heading", name="Results", exact=True)).to_be_visible()
    # The tables draw on a canvas; their accessible copy holds the cells' text.
    cell = page.get_by_role("gridcell", name=VARIANT, exact=True, include_hidden=True)
    expect(cell.first).to_be_attached()
    expect(page.get_by_role("heading", name="Answers side by side")).to_be_visible()
    expect(page.get_by_text("Name a colour of the sky.", exact=True)).to_be_visible()
    expect(page.get_by_text("The sky is blue.", exact=True)).to_be_visible()
    [entry] = AnswerStore(database.engine).side_by_side("feedback")
    assert set(entry.answers) == {DEMO_FILE, VARIANT}
    for model, answer in entry.answers.items():
        expect(page.get_by_text(model, exact=True).first).to_be_visible()
        expect(page.get_by_text(answer, exact=True).first).to_be_visible()
    shot(page, "lifecycle-2-evaluated")

    # A canary of the variant on the demo's alias, from the Evaluation page.
    choose(page, "Evaluated model", VARIANT)
    page.get_by_role("textbox", name="Note (why)").fill("Q8_0 is closer to the references")
    page.get_by_role("button", name="Start canary").click()
    expect(page.get_by_text("20% of the traffic")).to_be_visible()
    shot(page, "lifecycle-3-canary")
    rollouts = Rollouts(database.engine, settings)
    weights = {d["model"]: d["weight"] for d in rollouts.snapshot("smol")}
    assert weights == {DEMO_FILE: 100, VARIANT: 25}
    [record] = rollouts.history("smol")
    assert (record["action"], record["decided_by"]) == ("canary", "olga")
    assert record["signals"]["started_from"] == "evaluation"
    cited = {e["model"]: e["job_id"] for e in record["evaluation"]}
    assert cited == {DEMO_FILE: results[DEMO_FILE]["job_id"], VARIANT: results[VARIANT]["job_id"]}
