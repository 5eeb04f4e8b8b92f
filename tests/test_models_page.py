"""The Models page's quantize form and job list, run with AppTest on a real database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.control.accounts import Role
from app.control.audit import read_audit
from app.db.database import Database
from app.jobs.store import JobStore
from app.store.catalog import ModelStore
from tests.conftest import run_page
from tests.test_quantize import finished, wait_job


@pytest.fixture
def tiny_store(
    dashboard_env: None,
    database: Database,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
) -> ModelStore:
    store = ModelStore(database.engine, models_dir)
    store.add(tiny_gguf("tiny.gguf"))
    return store


def test_operator_starts_a_quantize_job_and_sees_it_end_with_lineage(
    tiny_store: ModelStore, database: Database
) -> None:
    app = run_page("models.py", Role.OPERATOR)
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
    [started] = read_audit(database.engine, action="model.quantize")
    assert (started.actor, started.via, started.target_id) == ("olivia", "page", str(job.id))
    assert started.origin == "models"
    assert started.after["target"] == "tiny.Q8_0.gguf"

    # A fresh load shows the job from the table, and the tree.
    app = run_page("models.py", Role.OPERATOR)
    assert any("Succeeded" in s.value for s in app.success)
    lineage = app.dataframe[1].value
    assert list(lineage["model"]) == ["tiny.gguf", "    └─ tiny.Q8_0.gguf"]


def test_a_refused_request_says_why_and_a_viewer_gets_no_form(tiny_store: ModelStore) -> None:
    app = run_page("models.py", Role.OPERATOR)
    app.multiselect(key="quantize_types").set_value(["Q8_0"])
    app.text_input(key="quantize_prune").input("5")
    app.button(key="FormSubmitter:quantize-Start quantizing").click()
    app.run()
    assert any("outside" in e.value for e in app.error), [e.value for e in app.error]

    viewer = run_page("models.py", Role.VIEWER)
    with pytest.raises(KeyError):
        viewer.multiselect(key="quantize_types")
