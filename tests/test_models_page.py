"""The Models page's quantize form and job list, run with AppTest on a real database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.accounts import Role
from app.config import Settings
from app.db.database import Database
from app.jobs.store import JobStore
from app.store.catalog import ModelStore
from tests.conftest import REPO_ROOT, log_in_as
from tests.test_quantize import finished, wait_job

PAGE = str(REPO_ROOT / "pages" / "models.py")


@pytest.fixture
def tiny_store(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    database: Database,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
) -> ModelStore:
    monkeypatch.setenv("HERD_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("HERD_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("HERD_HOME", str(settings.home))
    store = ModelStore(database.engine, models_dir)
    store.add(tiny_gguf("tiny.gguf"))
    return store


def _page(role: Role) -> AppTest:
    app = AppTest.from_file(PAGE, default_timeout=60)
    log_in_as(app, "olivia", role)
    app.run()
    assert not app.exception, app.exception
    return app


def test_operator_starts_a_quantize_job_and_sees_it_end_with_lineage(
    tiny_store: ModelStore, database: Database
) -> None:
    app = _page(Role.OPERATOR)
    assert "Q4_K_M" in app.multiselect(key="quantize_types").options
    assert "IQ2_XXS" not in app.multiselect(key="quantize_types").options
    app.multiselect(key="quantize_types").set_value(["Q8_0"])
    app.button(key="FormSubmitter:quantize-Start quantizing").click()
    app.run()
    assert not app.exception, app.exception
    assert any("Started job" in s.value for s in app.success), [e.value for e in app.error]
    jobs = JobStore(database.engine)
    [job] = jobs.recent("quantize")
    assert wait_job(jobs, job.id, finished, timeout_s=120).state == "succeeded"
    made = tiny_store.get("tiny.Q8_0.gguf")
    assert made is not None and made.created_by == "olivia"

    app = _page(Role.OPERATOR)  # a fresh load shows the job from the table, and the tree
    assert any("Succeeded" in s.value for s in app.success)
    lineage = app.dataframe[1].value
    assert list(lineage["model"]) == ["tiny.gguf", "    └─ tiny.Q8_0.gguf"]


def test_a_refused_request_says_why_and_a_viewer_gets_no_form(tiny_store: ModelStore) -> None:
    app = _page(Role.OPERATOR)
    app.multiselect(key="quantize_types").set_value(["Q8_0"])
    app.text_input(key="quantize_prune").input("5")
    app.button(key="FormSubmitter:quantize-Start quantizing").click()
    app.run()
    assert any("outside" in e.value for e in app.error), [e.value for e in app.error]

    viewer = _page(Role.VIEWER)
    with pytest.raises(KeyError):
        viewer.multiselect(key="quantize_types")
