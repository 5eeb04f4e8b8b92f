"""The Routing page, run with Streamlit's AppTest against a real database."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from app.config import Settings
from app.control.accounts import Role
from app.control.aliases import AliasSettings, AliasStore
from app.control.audit import read_audit
from app.control.deployments import DeploymentError, Deployments
from app.control.keys import ApiKeys, hash_key
from app.db.database import Database
from tests.conftest import REPO_ROOT, log_in_as
from tests.gateway_harness import add_deployment, add_model

PAGE = str(REPO_ROOT / "pages" / "routing.py")


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch, settings: Settings, database: Database) -> list[int]:
    """Alias `assistant` with two model versions at 100/100; their deployment ids."""
    monkeypatch.setenv("HERD_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("HERD_HOME", str(settings.home))
    v1 = add_model(database.engine, "assistant-v1.gguf")
    v2 = add_model(database.engine, "assistant-v2.gguf")
    return [add_deployment(database.engine, "assistant", m) for m in (v1, v2)]


def _page(role: Role) -> AppTest:
    app = AppTest.from_file(PAGE, default_timeout=30)
    log_in_as(app, "alice", role)
    app.run()
    assert not app.exception, app.exception
    return app


def _split(app: AppTest) -> dict[str, list[Any]]:
    table = app.dataframe[0].value
    return {column: list(table[column]) for column in table.columns}


def test_weights_show_the_split_before_saving(canary: list[int], database: Database) -> None:
    v1, v2 = canary
    app = _page(Role.OPERATOR)
    assert app.title[0].value == "Routing"
    assert _split(app)["share now"] == ["50.0%", "50.0%"]
    assert app.button(key="weights_save_assistant").disabled  # nothing changed yet

    app.number_input(key=f"weight_{v1}").set_value(95)
    app.number_input(key=f"weight_{v2}").set_value(5).run()
    assert not app.exception, app.exception
    split = _split(app)
    assert split["share after saving"] == ["95.0%", "5.0%"]
    assert split["share now"] == ["50.0%", "50.0%"]
    # Shown, not yet saved.
    assert [d.traffic_weight for d in Deployments(database.engine).all()] == [100, 100]

    app.button(key="weights_save_assistant").click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    weights = {d.id: d.traffic_weight for d in Deployments(database.engine).all()}
    assert weights == {v1: 95, v2: 5}
    assert _split(app)["share now"] == ["95.0%", "5.0%"]
    assert any("saved" in s.value for s in app.success)


def test_all_zero_weights_are_refused(canary: list[int], database: Database) -> None:
    v1, v2 = canary
    app = _page(Role.OPERATOR)
    app.number_input(key=f"weight_{v1}").set_value(0)
    app.number_input(key=f"weight_{v2}").set_value(0).run()
    assert _split(app)["share after saving"] == ["0.0%", "0.0%"]
    app.button(key="weights_save_assistant").click().run()
    assert not app.exception, app.exception
    assert "needs a weight above 0" in app.error[0].value
    assert [d.traffic_weight for d in Deployments(database.engine).all()] == [100, 100]


def test_alias_settings_are_saved(canary: list[int], database: Database) -> None:
    app = _page(Role.OPERATOR)
    app.toggle(key="alias_cache_assistant").set_value(False)
    app.number_input(key="alias_ttl_assistant").set_value(42.0)
    app.toggle(key="alias_log_assistant").set_value(False)
    app.number_input(key="alias_rpm_assistant").set_value(120)
    _submit(app, "Save alias settings")
    assert not app.error, [e.value for e in app.error]
    assert AliasStore(database.engine).all()["assistant"] == AliasSettings(
        cache_enabled=False, cache_ttl_s=42.0, log_text=False, rate_limit_rpm=120
    )


def test_key_is_shown_once_and_only_its_hash_is_stored(
    canary: list[int], database: Database
) -> None:
    app = _page(Role.ADMIN)
    app.text_input(key="key_name").input("support-bot")
    app.multiselect(key="key_scopes").select("assistant")
    app.number_input(key="key_rpm").set_value(30)
    _submit(app, "Create key")
    assert not app.error, [e.value for e in app.error]
    [shown] = [c.value for c in app.code]
    assert shown.startswith("herd-")
    with database.engine.connect() as conn:
        [row] = conn.execute(text("SELECT * FROM api_keys")).mappings().all()
    assert row["name"] == "support-bot" and row["created_by"] == "alice"
    assert row["key_hash"] == hash_key(shown)
    assert shown not in {str(v) for v in row.values()}  # the key itself is nowhere
    assert shown.startswith(row["prefix"])

    app.run()  # any later run: the key is gone from the page
    assert not app.code
    assert "support-bot" in [r for d in app.dataframe for r in list(d.value.get("name", []))]

    app.checkbox(key="key_revoke_confirm").check().run()
    app.button(key="key_revoke").click().run()
    assert not app.exception, app.exception
    [key] = ApiKeys(database.engine).list()
    assert not key.active
    assert (key.policy.scopes, key.policy.rate_limit_rpm) == (("assistant",), 30)
    audited = [(r.actor, r.via, r.action) for r in read_audit(database.engine, action="key.")]
    assert audited == [("alice", "page", "key.revoke"), ("alice", "page", "key.create")]


def test_viewer_can_look_but_not_change(canary: list[int], database: Database) -> None:
    ApiKeys(database.engine).create("existing")
    app = _page(Role.VIEWER)
    assert app.title[0].value == "Routing"
    assert _split(app)["share now"] == ["50.0%", "50.0%"]
    assert not app.number_input  # no weight or setting inputs
    assert not app.button  # no save, create or revoke
    assert not app.text_input
    names = [n for d in app.dataframe for n in list(d.value.get("name", []))]
    assert "existing" in names


def test_operator_cannot_manage_keys(canary: list[int]) -> None:
    app = _page(Role.OPERATOR)
    labels = [b.label for b in app.button]
    assert "Save weights" in labels
    assert "Create key" not in labels and "Revoke" not in labels
    assert any("admin" in c.value for c in app.caption)


def test_live_view_counts_requests_per_worker(canary: list[int], database: Database) -> None:
    v1, _ = canary
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO requests (id, alias, model_id, deployment_id, worker_id, status, "
                "http_status, cache_hit) SELECT gen_random_uuid(), 'assistant', "
                "(SELECT model_id FROM deployments WHERE id = :d), :d, w, s, h, c "
                "FROM (VALUES (7, 'ok', 200, false), (7, 'error', 502, false), "
                "(NULL, 'ok', 200, true)) AS v(w, s, h, c)"
            ),
            {"d": v1},
        )
    app = _page(Role.VIEWER)
    totals = app.dataframe[-1].value
    found = {
        r["target"]: (r["requests"], r["errors"], r["cache_hits"])
        for r in totals.to_dict("records")
    }
    assert found == {
        "worker 7 · assistant-v1.gguf": (2, 1, 0),
        "response cache": (1, 0, 1),
    }
    assert app.get("plotly_chart")


def _submit(app: AppTest, label: str) -> None:
    [button] = [b for b in app.button if b.label == label]
    button.click().run()
    assert not app.exception, app.exception


def test_stopped_deployments_get_no_share_and_weights_stay_within_the_alias(
    canary: list[int], database: Database
) -> None:
    v1, v2 = canary
    deployments = Deployments(database.engine)
    deployments.stop(v2)
    app = _page(Role.OPERATOR)
    assert _split(app)["share now"] == ["100.0%", "0.0%"]

    other = add_deployment(database.engine, "coder", add_model(database.engine, "coder.gguf"))
    with pytest.raises(DeploymentError, match="do not serve alias"):
        deployments.set_traffic_weights("assistant", {v1: 10, other: 90})
    with pytest.raises(DeploymentError, match="weight above 0"):
        deployments.set_traffic_weights("assistant", {v1: 0, v2: 100})  # v2 is stopped
    assert {d.id: d.traffic_weight for d in deployments.all()} == {v1: 100, v2: 100, other: 100}


def test_semantic_cache_is_turned_on_with_an_embedding_alias(
    canary: list[int], database: Database
) -> None:
    embed = add_deployment(database.engine, "embedder", add_model(database.engine, "e.gguf"))
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE deployments SET embeddings = true WHERE id = :id"), {"id": embed})
    app = _page(Role.OPERATOR)
    assert not app.warning  # the embedded server ships pgvector
    pick = app.selectbox(key="alias_semantic_assistant")
    assert pick.options == ["off", "embedder"]
    pick.select("embedder")
    app.number_input(key="alias_threshold_assistant").set_value(0.9)
    _submit(app, "Save alias settings")
    assert not app.error, [e.value for e in app.error]
    saved = AliasStore(database.engine).all()["assistant"]
    assert (saved.semantic_cache_alias, saved.semantic_cache_threshold) == ("embedder", 0.9)
    with database.engine.connect() as conn:
        assert conn.execute(
            text("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
        ).scalar_one()
    [table] = [d.value for d in app.dataframe if "semantic cache" in d.value.columns]
    assert "embedder ≥ 0.9" in list(table["semantic cache"])
