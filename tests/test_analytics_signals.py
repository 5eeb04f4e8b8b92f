"""Signals fire on the regression planted by the demo generator, and not on the noise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from app.analytics.demo_traffic import REGRESSED_MODEL, generate_demo_traffic, purge_synthetic
from app.analytics.recommend import Action, assess_versions, recommend
from app.analytics.scope import Scope
from app.analytics.signals import Signal, SignalKind
from app.analytics.traffic import parse_classes
from app.analytics.versions import compare_versions
from app.db.database import Database
from tests.analytics_data import rollup_totals

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
# Demo traffic is synthetic: counted only when asked for.
DEMO = parse_classes(["synthetic"])


@pytest.fixture
def demo(database: Database) -> Database:
    result = generate_demo_traffic(
        database.engine, 40_000, days=12, seed=0.25, now=NOW, chunk_rows=15_000
    )
    assert result.requests == 40_000
    return database


def test_planted_regression_is_flagged_with_reasons(demo: Database) -> None:
    # The regression covers the last quarter (3 days) of the 12: compare it with the 3 before.
    scope = Scope(start=NOW - timedelta(days=3), end=NOW, classes=DEMO)
    assessments = {a.version.model: a for a in assess_versions(demo.engine, scope)}
    assert len(assessments) == 4
    v2 = assessments[REGRESSED_MODEL]
    fired = {s.kind for s in v2.fired}
    assert {SignalKind.LATENCY_REGRESSION, SignalKind.SATISFACTION_DROP} <= fired
    assert SignalKind.COMPLAINTS in fired
    assert "refund" in v2.complaints.terms[0][0] if v2.complaints else False
    assert v2.complaints is not None and v2.complaints.examples
    assert v2.recommendation.action is Action.ROLLBACK
    assert v2.recommendation.rollback_to == "synthetic/assistant-v1.Q4_K_M.gguf"
    assert len(v2.recommendation.reasons) >= 3

    # Every other version is noise around a steady state: nothing regressed or dropped.
    for name, other in assessments.items():
        if name == REGRESSED_MODEL:
            continue
        kinds = {s.kind for s in other.fired}
        assert SignalKind.LATENCY_REGRESSION not in kinds, (name, other.signals)
        assert SignalKind.SATISFACTION_DROP not in kinds, (name, other.signals)
        assert other.recommendation.action is Action.KEEP, (name, other.recommendation)
        assert other.recommendation.reasons


def test_ab_comparison_marks_the_canary_worse(demo: Database) -> None:
    scope = Scope(start=NOW - timedelta(days=3), end=NOW, alias="assistant", classes=DEMO)
    (comparison,) = compare_versions(demo.engine, scope, "assistant")
    assert comparison.candidate.model == REGRESSED_MODEL
    assert comparison.thumbs_up is not None
    assert comparison.thumbs_up.difference < 0
    assert comparison.as_dict()["thumbs_up_significant"]
    assert (comparison.total_p95_ratio or 0) > 1.3
    assert compare_versions(demo.engine, scope, "coder") == []


def test_recommendation_without_an_earlier_version_retrains() -> None:
    low = Signal(SignalKind.LOW_SATISFACTION, True, "thumbs-up 40%")
    calm = Signal(SignalKind.LATENCY_REGRESSION, False, "p95 x1.0")
    assert recommend([low, calm], rollback_to=None).action is Action.RETRAIN
    slow = Signal(SignalKind.LATENCY_REGRESSION, True, "p95 x2")
    assert recommend([slow], rollback_to="old.gguf").action is Action.ROLLBACK
    kept = recommend([slow], rollback_to=None)
    assert kept.action is Action.KEEP and "p95 x2" in kept.reasons
    quiet = recommend([calm], rollback_to="old.gguf")
    assert quiet.action is Action.KEEP and "p95 x1.0" in quiet.reasons


def test_purge_removes_synthetic_rows_and_their_rollups(demo: Database) -> None:
    assert rollup_totals(demo.engine)["requests"] == 40_000
    assert purge_synthetic(demo.engine) == 40_000
    assert rollup_totals(demo.engine) == {"requests": 0, "ratings": 0, "up": 0}
    with demo.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM request_sessions")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM models")).scalar_one() == 0


def test_no_computable_signal_is_not_enough_data_not_keep() -> None:
    few = Signal(SignalKind.LOW_SATISFACTION, False, "only 3 ratings (< 30)", judged=False)
    idle = Signal(SignalKind.LATENCY_REGRESSION, False, "not enough requests", judged=False)
    unsure = recommend([few, idle], rollback_to="old.gguf")
    assert unsure.action is None and unsure.verdict == "not enough data"
    assert unsure.reasons == ["no signal could be computed", "only 3 ratings (< 30)",
                              "not enough requests"]  # fmt: skip
    # One signal with data is enough to judge.
    calm = Signal(SignalKind.LATENCY_REGRESSION, False, "p95 x1.0")
    assert recommend([few, calm], rollback_to=None).verdict == "keep"
    assert recommend([], rollback_to=None).verdict == "not enough data"
