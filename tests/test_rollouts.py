"""Canary, promotion, rollback and the canary guard on a real database's deployments."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from app.config import Settings
from app.control.audit import read_audit
from app.control.deployments import DeploymentRequest, Deployments, ServingSettings, traffic_shares
from app.db.database import Database
from app.evaluation.metrics import Metric
from app.evaluation.store import EvaluationStore
from app.rollouts.actions import RolloutError, Rollouts
from app.store.catalog import ModelStore
from tests.analytics_data import insert_requests, request_row
from tests.conftest import run_herd


@pytest.fixture
def alias(
    database: Database, models_dir: Path, tiny_gguf: Callable[..., Path]
) -> tuple[Deployments, int, int]:
    """Alias 'smol' served by v1.gguf; v2.gguf in the store, evaluated."""
    store = ModelStore(database.engine, models_dir)
    store.add(tiny_gguf("v1.gguf"))
    v2 = store.add(tiny_gguf("v2.gguf"))
    EvaluationStore(database.engine).record(v2.id, {Metric.PERPLEXITY: 12.5}, {"n_ctx": 512})
    deployments = Deployments(database.engine)
    current = deployments.create(
        DeploymentRequest("smol", ServingSettings("v1.gguf", n_ctx=256), replicas=0)
    )
    return deployments, current.id, v2.id


def weights(rollouts: Rollouts) -> dict[str, tuple[int, str]]:
    return {d["model"]: (d["weight"], d["state"]) for d in rollouts.snapshot("smol")}


def test_canary_promote_rollback_restores_each_step(
    database: Database, settings: Settings, alias: tuple[Deployments, int, int]
) -> None:
    _, current_id, v2_id = alias
    rollouts = Rollouts(database.engine, settings)
    canary_id = rollouts.canary("smol", "v2.gguf", 20, "alice", note="try v2")
    snap = rollouts.snapshot("smol")
    shares = traffic_shares({d["deployment_id"]: d["weight"] for d in snap})
    canary = next(d for d in snap if d["model"] == "v2.gguf")
    assert shares[canary["deployment_id"]] == pytest.approx(0.2)
    with pytest.raises(RolloutError, match="open"):
        rollouts.canary("smol", "v2.gguf", 10, "alice")

    rollouts.promote("smol", "bob")
    assert weights(rollouts) == {"v1.gguf": (0, "active"), "v2.gguf": (100, "active")}

    rollouts.rollback("smol", "carol", note="complaints")
    # One step back to the version before the canary; the canary's deployment stops.
    assert weights(rollouts) == {"v1.gguf": (100, "active"), "v2.gguf": (0, "stopped")}
    with pytest.raises(RolloutError, match="no open canary"):
        rollouts.rollback("smol", "carol")

    history = rollouts.history("smol")
    assert [h["action"] for h in history] == ["rollback", "promote", "canary"]
    first = history[-1]
    assert (first["id"], first["decided_by"], first["note"]) == (canary_id, "alice", "try v2")
    assert first["candidate_model_id"] == v2_id
    assert [e["perplexity"] for e in first["evaluation"]] == [12.5]
    assert first["before"] == [{"deployment_id": current_id, "model_id": first["before"][0][
        "model_id"], "model": "v1.gguf", "weight": 100, "state": "active"}]  # fmt: skip
    assert history[1]["grace_until"] is not None
    assert all(h["closed_at"] is not None for h in history if h["action"] != "rollback")
    # Each action is an audit_log row as well, with who and the weights before and after.
    audited = read_audit(database.engine, action="rollout.")
    assert [(e.action, e.actor, e.via) for e in audited] == [
        ("rollout.rollback", "carol", "page"),
        ("rollout.promote", "bob", "page"),
        ("rollout.canary", "alice", "page"),
    ]
    assert audited[-1].before == first["before"] and audited[-1].after == first["after"]


def test_the_grace_period_ends_by_stopping_the_previous_version(
    database: Database, settings: Settings, alias: tuple[Deployments, int, int]
) -> None:
    rollouts = Rollouts(database.engine, settings.model_copy(update={"rollout_grace_s": 0}))
    rollouts.canary("smol", "v2.gguf", 50, "alice")
    rollouts.promote("smol", "alice")
    rollouts.tick()
    assert weights(rollouts) == {"v1.gguf": (0, "stopped"), "v2.gguf": (100, "active")}


def test_the_guard_rolls_a_slow_failing_canary_back_with_the_numbers(
    database: Database, settings: Settings, alias: tuple[Deployments, int, int]
) -> None:
    _, current_id, _ = alias
    rollouts = Rollouts(database.engine, settings.model_copy(
        update={"canary_guard_min_requests": 20}))  # fmt: skip
    rollouts.canary("smol", "v2.gguf", 10, "alice")
    canary_id = next(d["deployment_id"] for d in rollouts.snapshot("smol")
                     if d["model"] == "v2.gguf")  # fmt: skip
    now = datetime.now(UTC) + timedelta(seconds=1)
    good = [request_row(now, alias="smol", deployment_id=current_id, total_ms=100.0)
            for _ in range(40)]  # fmt: skip
    few = [request_row(now, alias="smol", deployment_id=canary_id, total_ms=900.0)
           for _ in range(10)]  # fmt: skip
    insert_requests(database.engine, good + few)
    rollouts.tick()  # 10 canary requests: below the minimum, nothing happens
    assert weights(rollouts)["v2.gguf"][0] > 0
    insert_requests(database.engine, [
        request_row(now, alias="smol", deployment_id=canary_id, total_ms=900.0,
                    status="error", http_status=502) for _ in range(15)])  # fmt: skip
    rollouts.tick()
    assert weights(rollouts) == {"v1.gguf": (100, "active"), "v2.gguf": (0, "stopped")}
    [auto] = [h for h in rollouts.history("smol") if h["action"] == "auto_rollback"]
    assert auto["decided_by"] == "guard"
    signals = auto["signals"]
    assert signals["canary"]["requests"] == 25 and signals["canary"]["errors"] == 15
    assert signals["current"]["requests"] == 40 and signals["current"]["error_rate"] == 0
    assert any("error rate" in r for r in signals["reasons"])
    assert any("p95" in r for r in signals["reasons"])
    with database.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM rollouts WHERE action = 'auto_rollback'"))


def test_refusals(
    database: Database, settings: Settings, alias: tuple[Deployments, int, int]
) -> None:
    rollouts = Rollouts(database.engine, settings)
    with pytest.raises(RolloutError, match="between 0 and 100"):
        rollouts.canary("smol", "v2.gguf", 100, "alice")
    with pytest.raises(RolloutError, match="already serves"):
        rollouts.canary("smol", "v1.gguf", 5, "alice")
    with pytest.raises(RolloutError, match="no deployment serving"):
        rollouts.canary("other", "v2.gguf", 5, "alice")
    with pytest.raises(RolloutError, match="no open canary to promote"):
        rollouts.promote("smol", "alice")


def test_the_cli_walks_canary_promote_rollback(
    database: Database,
    settings: Settings,
    alias: tuple[Deployments, int, int],
    herd_env: dict[str, str],
) -> None:
    steps = (("canary", "smol", "v2.gguf", "--percent", "20"), ("promote", "smol"),
             ("rollback", "smol"))  # fmt: skip
    for step in steps:
        done = run_herd("rollout", *step, "--by", "dan", env=herd_env)
        assert done.returncode == 0, done.stderr
    assert "'v2.gguf': (0, 'stopped')" in done.stdout
    again = run_herd("rollout", "rollback", "smol", env=herd_env)
    assert again.returncode == 1 and "no open canary" in again.stderr
    rollouts = Rollouts(database.engine, settings)
    assert [h["decided_by"] for h in rollouts.history("smol")] == ["dan"] * 3
