"""The Deployments page, run with Streamlit's AppTest against a real database."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from app.config import Settings
from app.control.accounts import Role
from app.control.audit import read_audit
from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
from app.db.database import Database
from app.engine.serving import ServingParams, serving_field
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model
from app.supervisor import logs
from app.supervisor.records import SupervisorRecords
from app.ui.deployment_rows import CPU_ONLY_REBUILD
from tests.conftest import REPO_ROOT, TINY, log_in_as
from tests.worker_process import WorkerLauncher

PAGE = str(REPO_ROOT / "pages" / "deployments.py")


@pytest.fixture
def page_env(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    database: Database,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
) -> Deployments:
    monkeypatch.setenv("HERD_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("HERD_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("HERD_HOME", str(settings.home))
    ModelStore(database.engine, models_dir).add(tiny_gguf("tiny.gguf"))
    return Deployments(database.engine)


def _page(role: Role) -> AppTest:
    app = AppTest.from_file(PAGE, default_timeout=30)
    log_in_as(app, "someone", role)
    app.run()
    assert not app.exception, app.exception
    return app


def test_operator_deploys_with_the_estimate_shown(
    page_env: Deployments, database: Database
) -> None:
    app = _page(Role.OPERATOR)
    assert app.title[0].value == "Deployments"
    assert "Nothing deployed yet." in [i.value for i in app.info]
    slider = app.slider(key="deploy_n_gpu_layers")
    assert (slider.min, slider.max) == (-1, TINY["n_layer"])
    metrics = {m.label: m.value for m in app.metric}
    cpu_vram = metrics["VRAM estimate"]

    slider.set_value(-1).run()
    assert not app.exception, app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["VRAM estimate"] != cpu_vram  # the estimate follows the slider

    app.text_input(key="deploy_alias").input("tiny-chat")
    app.number_input(key="deploy_n_ctx").set_value(256)
    app.number_input(key="deploy_replicas").set_value(2)
    app.button(key="deploy_submit").click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    [created] = page_env.all()
    assert (created.alias, created.replicas, created.serving.n_gpu_layers) == ("tiny-chat", 2, -1)
    assert created.serving.n_ctx == 256
    assert "Deploy: done." in [s.value for s in app.success]
    shown = app.dataframe[0].value
    assert list(shown["alias"]) == ["tiny-chat"]
    assert list(shown["ready"]) == ["0 / 2"]
    [audited] = read_audit(database.engine)
    assert (audited.actor, audited.via, audited.action) == ("someone", "page", "deployment.create")
    assert audited.after["replicas"] == 2 and audited.before is None


def test_context_above_training_needs_confirmation(page_env: Deployments) -> None:
    app = _page(Role.OPERATOR)
    app.number_input(key="deploy_n_ctx").set_value(TINY["n_ctx_train"] * 2).run()
    app.button(key="deploy_submit").click().run()
    assert not app.exception, app.exception
    assert "trained for" in app.error[0].value
    assert page_env.all() == []

    app.checkbox(key="deploy_overflow").check().run()
    app.button(key="deploy_submit").click().run()
    assert not app.error, [e.value for e in app.error]
    assert [d.serving.n_ctx for d in page_env.all()] == [TINY["n_ctx_train"] * 2]


def test_deploy_on_chosen_nodes_and_bad_labels_are_refused(page_env: Deployments) -> None:
    app = _page(Role.OPERATOR)
    app.text_input(key="deploy_labels").input("gpu h100").run()
    app.button(key="deploy_submit").click().run()
    assert not app.exception, app.exception
    assert "node labels" in app.error[0].value and "key=value" in app.error[0].value
    assert page_env.all() == []  # nothing half-created

    app.text_input(key="deploy_node").input("gpu-box-1")
    app.text_input(key="deploy_labels").input("gpu=h100, zone=a").run()
    app.button(key="deploy_submit").click().run()
    assert not app.error, [e.value for e in app.error]
    [created] = page_env.all()
    assert (created.node, created.node_labels) == ("gpu-box-1", {"gpu": "h100", "zone": "a"})
    assert list(app.dataframe[0].value["runs on"]) == ["node gpu-box-1, gpu=h100, zone=a"]


def test_scale_stop_and_delete_from_the_page(page_env: Deployments) -> None:
    d = page_env.create(DeploymentRequest("a", ServingSettings(model="tiny.gguf", n_ctx=256)))
    app = _page(Role.OPERATOR)
    app.number_input(key=f"scale_{d.id}").set_value(3)
    app.button(key=f"scale_submit_{d.id}").click().run()
    assert page_env.get(d.id).replicas == 3
    app.button(key=f"stop_{d.id}").click().run()
    assert page_env.get(d.id).state == "stopped"
    app.button(key=f"start_{d.id}").click().run()
    assert page_env.get(d.id).state == "active"
    assert app.button(key=f"delete_{d.id}").disabled  # needs the confirmation first
    app.checkbox(key=f"confirm_delete_{d.id}").check().run()
    app.button(key=f"delete_{d.id}").click().run()
    assert not app.exception, app.exception
    assert page_env.all() == []


def test_viewer_sees_status_but_cannot_change(page_env: Deployments) -> None:
    page_env.create(DeploymentRequest("a", ServingSettings(model="tiny.gguf", n_ctx=256)))
    app = _page(Role.VIEWER)
    assert list(app.dataframe[0].value["alias"]) == ["a"]
    keys = {b.key for b in app.button}
    assert not {k for k in keys if k and ("deploy" in k or "scale" in k or "delete" in k)}


def test_cpu_only_build_notice_and_worker_log(
    page_env: Deployments, database: Database, settings: Settings
) -> None:
    d = page_env.create(
        DeploymentRequest("a", ServingSettings(model="tiny.gguf", n_ctx=256, n_gpu_layers=-1))
    )
    log_path = logs.new_log_path(settings, d.id, "a", 1)
    log_path.write_text("llama.cpp says hello\n")
    SupervisorRecords(database.engine, "here").add_process(d.id, 1, 4242, str(log_path))
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workers (deployment_id, host, url, pid, state, "
                "gpu_offload_supported, n_gpu_layers_offloaded, rss_bytes) "
                "VALUES (:d, '127.0.0.1', 'http://127.0.0.1:9', 4242, 'ready', false, 0, 123456)"
            ),
            {"d": d.id},
        )
    app = _page(Role.OPERATOR)
    warnings = " ".join(w.value for w in app.warning)
    assert "CPU-only" in warnings and CPU_ONLY_REBUILD in warnings
    workers = app.dataframe[1].value
    assert list(workers["pid"]) == [4242] and list(workers["state"]) == ["ready"]
    assert "llama.cpp says hello" in app.code[0].value


def test_workers_show_slots_and_prefix_cache_hits_of_a_real_worker(
    page_env: Deployments, database: Database, models_dir: Path, worker_launcher: WorkerLauncher
) -> None:
    model = add_demo_model(ModelStore(database.engine, models_dir))
    d = page_env.create(
        DeploymentRequest("smol", ServingSettings(model=model.name, n_ctx=1024, parallel=2))
    )
    worker = worker_launcher.start(
        "--model", model.name, "--alias", "smol", "--deployment-id", str(d.id),
        "--parallel", "2", "--n-ctx", "1024",
    )  # fmt: skip
    url = worker.wait_ready()
    app = _page(Role.OPERATOR)
    [row] = app.dataframe[1].value.to_dict("records")
    assert row["slots busy"] == "0 / 2" and row["prefix cache hits"] == "no prompts yet"

    # The second chat shares the first one's long system prompt: its prefix comes from the cache.
    system = "You are a terse assistant. " + " ".join(f"Rule {i}: be brief." for i in range(40))
    for question in ("Name a fruit.", "Name a colour."):
        body = {
            "model": "smol",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            "max_tokens": 2,
            "temperature": 0,
        }
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    cached = answer["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 100
    health = httpx.get(f"{url}/health", timeout=5).json()
    assert health["cached_prompt_tokens_total"] == cached
    rate = cached / health["prompt_tokens_total"]
    assert health["prefix_hit_rate"] == pytest.approx(rate)

    # The row's slot count comes with the next heartbeat after the requests ended.
    deadline = time.monotonic() + 10
    while (worker.row() or {}).get("slots_busy") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    app.run()
    assert not app.exception, app.exception
    [row] = app.dataframe[1].value.to_dict("records")
    expected = f"{rate * 100:.0f} % of {health['prompt_tokens_total']:,} tokens"
    assert row["prefix cache hits"] == expected and row["slots busy"] == "0 / 2"

    # A worker the dashboard cannot reach shows "-", and the page still renders.
    worker.stop()
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workers (deployment_id, host, url, pid, state, slots_total, "
                "slots_busy) VALUES (:d, '127.0.0.1', 'http://127.0.0.1:9', 4343, 'ready', 2, 1)"
            ),
            {"d": d.id},
        )
    app.run()
    assert not app.exception, app.exception
    [row] = app.dataframe[1].value.to_dict("records")
    assert row["prefix cache hits"] == "-" and row["slots busy"] == "1 / 2"


def test_deploy_for_embeddings_with_a_chosen_pooling(page_env: Deployments) -> None:
    app = _page(Role.OPERATOR)
    assert app.selectbox(key="deploy_pooling").disabled  # only for embedding deployments
    app.text_input(key="deploy_alias").input("tiny-embed")
    app.checkbox(key="deploy_embeddings").check().run()
    app.selectbox(key="deploy_pooling").select("cls").run()
    app.button(key="deploy_submit").click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    [created] = page_env.all()
    assert (created.serving.embeddings, created.serving.pooling) == (True, "cls")
    assert list(app.dataframe[0].value["serves"]) == ["embeddings (cls)"]


def test_the_form_shows_every_labelled_serving_parameter(page_env: Deployments) -> None:
    # The widgets come from ServingParams: a field given a label appears without page code.
    app = _page(Role.OPERATOR)
    widgets = [*app.slider, *app.number_input, *app.checkbox, *app.selectbox]
    shown = {w.key: w.label for w in widgets if w.key and w.key.startswith("deploy_")}
    for f in fields(ServingParams):
        if f.metadata["label"] is not None:
            assert shown.get(f"deploy_{f.name}") == f.metadata["label"], f.name
    parallel = app.number_input(key="deploy_parallel")
    assert parallel.max == serving_field("parallel").metadata["bound"].high
