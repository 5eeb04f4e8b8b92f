"""The Rollouts page and the Retraining page's 'execute rollback', with AppTest."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.analytics.decisions import record_decision
from app.config import Settings
from app.control.accounts import Role
from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
from app.db.database import Database
from app.rollouts.actions import Rollouts
from app.store.catalog import ModelStore
from tests.conftest import run_page


@pytest.fixture
def served(
    dashboard_env: None,
    settings: Settings,
    database: Database,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
) -> Rollouts:
    store = ModelStore(database.engine, models_dir)
    store.add(tiny_gguf("v1.gguf"))
    store.add(tiny_gguf("v2.gguf"))
    Deployments(database.engine).create(
        DeploymentRequest("smol", ServingSettings("v1.gguf", n_ctx=256), replicas=0)
    )
    return Rollouts(database.engine, settings)


def test_canary_promote_rollback_from_the_page(served: Rollouts) -> None:
    app = run_page("rollouts.py", Role.OPERATOR)
    app.selectbox(key="canary_model").select("v2.gguf")
    app.number_input(key="canary_percent").set_value(20)
    app.button(key="FormSubmitter:canary-Start canary").click().run()
    assert not app.exception, app.exception
    assert "20% of the traffic" in app.success[0].value
    shares = {row["model"]: row["share"] for _, row in app.dataframe[0].value.iterrows()}
    assert shares == {"v1.gguf": "80%", "v2.gguf": "20%"}

    # Promote and roll back each ask first; Cancel leaves everything as it was.
    app.button(key="promote").click().run()
    assert not app.success
    assert "Give v2.gguf all of `smol`'s traffic?" in app.warning[0].value
    app.button(key="promote_cancel").click().run()
    assert not app.warning
    assert [h["action"] for h in served.history("smol")] == ["canary"]
    app.button(key="promote").click().run()
    app.button(key="promote_confirm").click().run()
    assert "all the traffic" in app.success[0].value
    app.button(key="rollback").click().run()
    assert "Undo the promote of v2.gguf on `smol`" in app.warning[0].value
    assert [h["action"] for h in served.history("smol")] == ["promote", "canary"]
    app.button(key="rollback_confirm").click().run()
    assert "previous version is back" in app.success[0].value
    weights = {d["model"]: (d["weight"], d["state"]) for d in served.snapshot("smol")}
    assert weights == {"v1.gguf": (100, "active"), "v2.gguf": (0, "stopped")}
    history = app.dataframe[-1].value
    assert list(history["action"]) == ["rollback", "promote", "canary"]
    # Weights read as words, not dict reprs.
    assert list(history["weights after"]) == [
        "v1.gguf 100, v2.gguf 0", "v1.gguf 0, v2.gguf 100", "v1.gguf 100, v2.gguf 25"
    ]  # fmt: skip
    assert set(history["by"]) == {"olivia"}

    viewer = run_page("rollouts.py", Role.VIEWER)
    assert not [b for b in viewer.button if b.label in ("Promote", "Roll back")]
    with pytest.raises(KeyError):
        viewer.selectbox(key="canary_model")


def test_a_recorded_rollback_decision_is_executed_from_the_retraining_page(
    served: Rollouts, database: Database
) -> None:
    served.canary("smol", "v2.gguf", 50, "alice")
    served.promote("smol", "alice")
    now = datetime.now(UTC)
    decision = record_decision(
        database.engine, model_id=None, alias="smol", decision="rollback", decided_by="bob",
        period_start=now - timedelta(days=1), period_end=now,
    )  # fmt: skip
    app = run_page("retraining.py", Role.OPERATOR)
    app.button(key=f"execute_rollback_{decision}").click().run()
    assert not app.exception, app.exception
    assert any("Undo the promote" in w.value for w in app.warning)
    assert [h["action"] for h in served.history("smol")] == ["promote", "canary"]
    app.button(key=f"execute_rollback_{decision}_confirm").click().run()
    assert not app.exception, app.exception
    [rollback] = [h for h in served.history("smol") if h["action"] == "rollback"]
    assert (rollback["decision_id"], rollback["decided_by"]) == (decision, "olivia")
    weights = {d["model"]: d["weight"] for d in served.snapshot("smol")}
    assert weights == {"v1.gguf": 100, "v2.gguf": 0}


def test_the_canary_confirmation_keeps_the_model_name_as_written(
    served: Rollouts, models_dir: Path, database: Database, tiny_gguf: Callable[..., Path]
) -> None:
    ModelStore(database.engine, models_dir).add(tiny_gguf("SmolLM2-Canary.Q8_0.gguf"))
    app = run_page("rollouts.py", Role.OPERATOR)
    app.selectbox(key="canary_model").select("SmolLM2-Canary.Q8_0.gguf")
    app.button(key="FormSubmitter:canary-Start canary").click().run()
    assert not app.exception, app.exception
    assert app.success[0].value == "Canary SmolLM2-Canary.Q8_0.gguf on smol: 20% of the traffic."
