"""The Evaluation page with AppTest: results table, Pareto charts, the start form."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.accounts import Role
from app.config import Settings
from app.db.database import Database
from app.evaluation.metrics import Metric
from app.evaluation.store import EvaluationStore
from app.store.catalog import ModelStore
from tests.conftest import REPO_ROOT, log_in_as

PAGE = str(REPO_ROOT / "pages" / "evaluation.py")


@pytest.fixture
def evaluated(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    database: Database,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
) -> None:
    monkeypatch.setenv("HERD_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("HERD_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("HERD_HOME", str(settings.home))
    store = ModelStore(database.engine, models_dir)
    results = EvaluationStore(database.engine)
    for name, size, ppl, tps in (("a.gguf", 100, 20.0, 50.0), ("b.gguf", 150, 19.0, 40.0),
                                 ("c.gguf", 160, 21.0, 30.0)):  # fmt: skip
        model = store.add(tiny_gguf(name))
        results.record(model.id, {Metric.SIZE: size, Metric.PERPLEXITY: ppl,
                                  Metric.DECODE: tps}, {"n_ctx": 512})  # fmt: skip


def _page(role: Role) -> AppTest:
    app = AppTest.from_file(PAGE, default_timeout=60)
    log_in_as(app, "olivia", role)
    app.run()
    assert not app.exception, app.exception
    return app


def test_results_and_pareto_charts_are_shown(evaluated: None) -> None:
    app = _page(Role.VIEWER)
    table = app.dataframe[0].value
    assert list(table["model"]) == ["a.gguf", "b.gguf", "c.gguf"]
    assert list(table["perplexity"]) == [20.0, 19.0, 21.0]
    charts = app.get("plotly_chart")
    assert len(charts) == 2
    size_chart = json.loads(charts[0].proto.spec)
    front = next(t for t in size_chart["data"] if t["name"] == "Pareto front")
    assert front["x"] == [100, 150]  # c is bigger and worse than b: not on the front
    with pytest.raises(KeyError):
        app.multiselect(key="eval_models")  # a viewer gets no form


def test_an_operator_gets_a_clear_refusal(evaluated: None) -> None:
    app = _page(Role.OPERATOR)
    app.button(key="FormSubmitter:evaluate-Evaluate").click()
    app.run()
    assert [e.value for e in app.error] == ["Cannot evaluate: choose at least one model"]
