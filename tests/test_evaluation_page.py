"""The Evaluation page with AppTest: results table, Pareto charts, the start form."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from app.accounts import Role
from app.db.database import Database
from app.evaluation.metrics import Metric
from app.evaluation.store import EvaluationStore
from app.store.catalog import ModelStore
from tests.conftest import run_page


@pytest.fixture
def evaluated(
    dashboard_env: None,
    database: Database,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
) -> None:
    store = ModelStore(database.engine, models_dir)
    results = EvaluationStore(database.engine)
    for name, size, ppl, tps in (("a.gguf", 100, 20.0, 50.0), ("b.gguf", 150, 19.0, 40.0),
                                 ("c.gguf", 160, 21.0, 30.0)):  # fmt: skip
        model = store.add(tiny_gguf(name))
        results.record(model.id, {Metric.SIZE: size, Metric.PERPLEXITY: ppl,
                                  Metric.DECODE: tps}, {"n_ctx": 512})  # fmt: skip



def test_results_and_pareto_charts_are_shown(evaluated: None) -> None:
    app = run_page("evaluation.py", Role.VIEWER)
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
    app = run_page("evaluation.py", Role.OPERATOR)
    app.button(key="FormSubmitter:evaluate-Evaluate").click()
    app.run()
    assert [e.value for e in app.error] == ["Cannot evaluate: choose at least one model"]
