"""The Evaluation page with AppTest: results table, Pareto charts, the start form."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from app.config import Settings
from app.control.accounts import Role
from app.control.audit import read_audit
from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
from app.db.database import Database
from app.evaluation.answers import AnswerStore, GeneratedAnswer
from app.evaluation.metrics import Metric
from app.evaluation.references import Reference
from app.evaluation.store import EvaluationStore
from app.rollouts.actions import Rollouts
from app.store.catalog import ModelStore
from tests.conftest import run_page

BEES = Reference("thumbs_up", [{"role": "user", "content": "What do bees make?"}], "Honey.")
SKY = Reference("correction", [{"role": "user", "content": "Colour of the sky?"}], "Blue.")


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
        if name != "c.gguf":
            AnswerStore(database.engine).record(model.id, "feedback", [
                GeneratedAnswer(BEES, 0, f"{name} says wax", 3),
                GeneratedAnswer(SKY, 1, f"{name} says blue", 3),
            ], max_tokens=16)  # fmt: skip


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


def test_answers_are_shown_side_by_side_per_prompt(evaluated: None) -> None:
    app = run_page("evaluation.py", Role.VIEWER)
    assert not app.exception, app.exception
    texts = [t.value for t in app.text]
    # Per prompt, in the set's order: the prompt, the reference, then each model's answer.
    assert texts == [
        "What do bees make?", "Honey.", "a.gguf says wax", "b.gguf says wax",
        "Colour of the sky?", "Blue.", "a.gguf says blue", "b.gguf says blue",
    ]  # fmt: skip
    captions = [c.value for c in app.caption]
    assert captions.count("reference") == 2 and captions.count("b.gguf") == 2
    # Fewer models to compare: only their columns remain.
    app.multiselect(key="answers_models").set_value(["b.gguf"]).run()
    assert "a.gguf says wax" not in [t.value for t in app.text]
    assert "b.gguf says wax" in [t.value for t in app.text]


def test_an_operator_starts_a_canary_from_the_evaluation_page(
    evaluated: None, database: Database, settings: Settings
) -> None:
    Deployments(database.engine).create(
        DeploymentRequest("smol", ServingSettings("a.gguf", n_ctx=256), replicas=0)
    )
    app = run_page("evaluation.py", Role.OPERATOR)
    app.selectbox(key="eval_canary_model").select("b.gguf")
    app.selectbox(key="eval_canary_alias").select("smol")
    app.number_input(key="eval_canary_percent").set_value(20)
    app.text_input(key="eval_canary_note").input("lower perplexity")
    app.button(key="FormSubmitter:eval_canary-Start canary").click().run()
    assert not app.exception, app.exception
    assert [s.value for s in app.success] == ["Canary b.gguf on smol: 20% of the traffic."]
    rollouts = Rollouts(database.engine, settings)
    weights = {d["model"]: d["weight"] for d in rollouts.snapshot("smol")}
    assert weights == {"a.gguf": 100, "b.gguf": 25}
    [record] = rollouts.history("smol")
    assert (record["action"], record["decided_by"], record["note"]) == (
        "canary", "olivia", "lower perplexity")  # fmt: skip
    assert record["signals"] == {"started_from": "evaluation", "percent": 20.0}
    # The evaluations it cites: the canary's and the current version's, as they stood.
    cited = {e["model"]: e[Metric.PERPLEXITY.value] for e in record["evaluation"]}
    assert cited == {"a.gguf": 20.0, "b.gguf": 19.0}
    [audited] = read_audit(database.engine, action="rollout.")
    assert (audited.action, audited.actor, audited.via) == ("rollout.canary", "olivia", "page")
    assert audited.origin == "evaluation"  # the page it was started on, not "rollouts"
    # A second canary on the same alias is refused plainly while this one is open.
    app.selectbox(key="eval_canary_model").select("c.gguf")
    app.button(key="FormSubmitter:eval_canary-Start canary").click().run()
    assert "has a canary or promotion open" in app.error[0].value
