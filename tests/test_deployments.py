"""Deployments: validation, changes and views, against a real PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from app.config import Settings
from app.control.deployments import (
    ContextTooLargeError,
    DeploymentRequest,
    Deployments,
    InvalidModelError,
    InvalidSettingError,
    ServingSettings,
    UnknownDeploymentError,
    UnknownModelError,
)
from app.db.database import Database
from app.gateway.routing import load_snapshot
from app.store.catalog import ModelStore
from app.supervisor import logs
from app.supervisor.records import SupervisorRecords
from tests.conftest import TINY


@pytest.fixture
def store(database: Database, models_dir: Path, tiny_gguf: Callable[..., Path]) -> ModelStore:
    store = ModelStore(database.engine, models_dir)
    store.add(tiny_gguf("tiny.gguf"))
    store.add(tiny_gguf("other.gguf", tied_output=True))
    return store


@pytest.fixture
def deployments(database: Database, store: ModelStore) -> Deployments:
    return Deployments(database.engine)


TINY_SERVING = ServingSettings(model="tiny.gguf", n_ctx=256)


def test_create_and_view(deployments: Deployments) -> None:
    created = deployments.create(
        DeploymentRequest(
            "tiny-chat",
            dataclasses.replace(TINY_SERVING, n_gpu_layers=-1, parallel=2, threads=3),
            replicas=2,
        )
    )
    assert created.alias == "tiny-chat"
    assert created.model_name == "tiny.gguf"
    assert Path(created.model_path).name == "tiny.gguf"
    assert created.replicas == 2
    assert created.serving == ServingSettings(
        model="tiny.gguf", n_gpu_layers=-1, n_ctx=256, parallel=2, threads=3
    )
    assert (created.state, created.generation, created.failures, created.error) == (
        "active",
        1,
        0,
        None,
    )
    assert created.workers == []
    assert [d.id for d in deployments.all()] == [created.id]
    assert deployments.get(created.id) == created


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"model": "nope.gguf"}, UnknownModelError, "no model called 'nope.gguf'"),
        ({"n_ctx": -5}, InvalidSettingError, "n_ctx must be 0 or more"),
        ({"n_gpu_layers": -2}, InvalidSettingError, "n_gpu_layers must be -1"),
        ({"parallel": -1}, InvalidSettingError, "parallel must be 0 or more"),
        ({"threads": 0}, InvalidSettingError, "threads must be 1 or more"),
        ({"main_gpu": -1}, InvalidSettingError, "main_gpu"),
        ({"tensor_split": (0.0, 0.0)}, InvalidSettingError, "tensor_split"),
        ({"tensor_split": (1.0, -1.0)}, InvalidSettingError, "tensor_split"),
        ({"n_ctx": TINY["n_ctx_train"] + 1}, ContextTooLargeError, "trained"),
    ],
)
def test_invalid_settings_are_refused(
    deployments: Deployments, change: dict[str, object], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        deployments.create(DeploymentRequest("a", dataclasses.replace(TINY_SERVING, **change)))  # type: ignore[arg-type]
    assert deployments.all() == []


def test_errors_are_value_errors_with_clear_messages(deployments: Deployments) -> None:
    with pytest.raises(ValueError, match="replicas must be 0 or more, not -1"):
        deployments.create(DeploymentRequest("a", TINY_SERVING, replicas=-1))
    with pytest.raises(ContextTooLargeError) as caught:
        deployments.create(DeploymentRequest("a", dataclasses.replace(TINY_SERVING, n_ctx=4096)))
    assert str(caught.value).startswith(
        f"n_ctx 4096 is above the {TINY['n_ctx_train']} tokens tiny.gguf was trained for"
    )


@pytest.mark.parametrize("alias", ["", "  ", "-x", "has space", "a" * 129, "é"])
def test_bad_aliases_are_refused(deployments: Deployments, alias: str) -> None:
    with pytest.raises(InvalidSettingError, match="alias"):
        deployments.create(DeploymentRequest(alias, TINY_SERVING))


def test_context_overflow_needs_confirmation(deployments: Deployments) -> None:
    big = dataclasses.replace(TINY_SERVING, n_ctx=2048)
    with pytest.raises(ContextTooLargeError):
        deployments.create(DeploymentRequest("a", big))
    created = deployments.create(DeploymentRequest("a", big, allow_ctx_overflow=True))
    assert created.serving.n_ctx == 2048


def test_invalid_model_is_refused(
    deployments: Deployments, store: ModelStore, models_dir: Path
) -> None:
    (models_dir / "tiny.gguf").unlink()
    store.scan()
    with pytest.raises(InvalidModelError, match=r"tiny\.gguf cannot be served: it is missing"):
        deployments.create(DeploymentRequest("a", TINY_SERVING))


def test_scale_stop_start_delete(deployments: Deployments) -> None:
    d = deployments.create(DeploymentRequest("a", TINY_SERVING))
    assert deployments.scale(d.id, 3).replicas == 3
    assert deployments.scale(d.id, 0).replicas == 0
    with pytest.raises(InvalidSettingError, match="replicas must be 0 or more"):
        deployments.scale(d.id, -1)
    assert deployments.get(d.id).replicas == 0
    assert deployments.stop(d.id).state == "stopped"
    assert deployments.start(d.id).state == "active"
    deployments.delete(d.id)
    assert deployments.all() == []
    for change in (
        lambda: deployments.scale(d.id, 1),
        lambda: deployments.stop(d.id),
        lambda: deployments.start(d.id),
        lambda: deployments.delete(d.id),
        lambda: deployments.get(d.id),
        lambda: deployments.roll(d.id, TINY_SERVING),
    ):
        with pytest.raises(UnknownDeploymentError, match=f"no deployment with id {d.id}"):
            change()


def test_roll_changes_settings_and_bumps_the_generation(
    deployments: Deployments, database: Database
) -> None:
    d = deployments.create(DeploymentRequest("a", TINY_SERVING))
    # A failed deployment: the roll is how an operator fixes it, so it starts afresh.
    with database.engine.begin() as conn:
        conn.execute(
            text("UPDATE deployments SET state='failed', failures=5, error='boom' WHERE id=:id"),
            {"id": d.id},
        )
    rolled = deployments.roll(d.id, ServingSettings(model="other.gguf", n_ctx=128, parallel=2))
    assert rolled.model_name == "other.gguf"
    assert rolled.serving.n_ctx == 128 and rolled.serving.parallel == 2
    assert (rolled.generation, rolled.state, rolled.failures, rolled.error) == (
        2,
        "active",
        0,
        None,
    )
    with pytest.raises(UnknownModelError):
        deployments.roll(d.id, ServingSettings(model="missing.gguf"))
    with pytest.raises(ContextTooLargeError):
        deployments.roll(d.id, dataclasses.replace(TINY_SERVING, n_ctx=100_000))
    assert deployments.get(d.id).generation == 2  # refused rolls change nothing


def test_every_change_notifies_supervisors(deployments: Deployments, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN herd_deployments")
        d = deployments.create(DeploymentRequest("a", TINY_SERVING))
        deployments.scale(d.id, 2)
        deployments.delete(d.id)
        got = list(listener.notifies(timeout=2.0, stop_after=3))
    assert [n.channel for n in got] == ["herd_deployments"] * 3


def test_workers_view_merges_processes_and_worker_rows(
    deployments: Deployments, database: Database, settings: Settings
) -> None:
    d = deployments.create(DeploymentRequest("a", TINY_SERVING, replicas=2))
    records = SupervisorRecords(database.engine, "node-a")
    log_a = logs.new_log_path(settings, d.id, "a", 1)
    log_a.write_text("loading\nready\n")
    records.add_process(d.id, 1, 4001, str(log_a))
    records.add_process(d.id, 1, 4002, str(logs.new_log_path(settings, d.id, "a", 1)))
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workers (deployment_id, host, url, pid, state, slots_total, "
                "slots_busy, queue_length, tokens_per_second, rss_bytes) VALUES "
                "(:d, '127.0.0.1', 'http://127.0.0.1:9001', 4001, 'ready', 1, 1, 2, 33.5, 1000),"
                "(:d, 'gpu-box', 'http://gpu-box:9000', 77, 'failed', NULL, NULL, NULL, NULL, NULL)"
            ),
            {"d": d.id},
        )
        conn.execute(
            text("UPDATE workers SET error = 'out of memory' WHERE pid = 77"),
        )
    workers = {w.pid: w for w in deployments.get(d.id).workers}
    assert set(workers) == {4001, 4002, 77}
    ready = workers[4001]
    assert (ready.state, ready.url, ready.node, ready.generation) == (
        "ready",
        "http://127.0.0.1:9001",
        "node-a",
        1,
    )
    assert (ready.slots_busy, ready.queue_length, ready.tokens_per_second) == (1, 2, 33.5)
    assert ready.log_path == str(log_a)
    assert logs.tail(settings, ready.log_path) == "loading\nready\n"
    assert workers[4002].state == "starting"  # started, not registered yet
    external = workers[77]
    assert (external.state, external.error, external.node) == ("failed", "out of memory", None)
    assert deployments.get(d.id).ready_replicas == 1

    # A worker is shown ready exactly while the gateway routes to it: one liveness rule
    # (Settings.worker_live_s) for both. 7 s of silence: the gateway (5 s) has dropped it.
    with database.engine.begin() as conn:
        conn.execute(
            text("UPDATE workers SET heartbeat_at = now() - interval '7 seconds' WHERE pid = 4001")
        )
    assert settings.worker_live_s == 5
    assert {w.pid: w.state for w in deployments.workers(d.id)}[4001] == "silent"
    assert "http://127.0.0.1:9001" not in _routed_urls(database, settings)
    relaxed = Deployments(database.engine, live_s=10)
    assert {w.pid: w.state for w in relaxed.workers(d.id)}[4001] == "ready"
    relaxed_settings = settings.model_copy(update={"worker_live_s": 10})
    assert "http://127.0.0.1:9001" in _routed_urls(database, relaxed_settings)


def _routed_urls(database: Database, settings: Settings) -> set[str]:
    """Worker URLs the gateway would route to now."""
    return {
        w.url
        for route in load_snapshot(database.engine, settings).routes.values()
        for deployment in route.deployments
        for w in deployment.workers
    }


def test_log_tail_refuses_files_outside_the_log_folder(settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    with pytest.raises(logs.LogAccessError):
        logs.tail(settings, outside)
    with pytest.raises(logs.LogAccessError):
        logs.tail(settings, settings.logs_dir / ".." / ".." / "secret.txt")
    assert logs.tail(settings, settings.logs_dir / "workers" / "gone.log") == ""


def test_log_tail_starts_at_a_whole_line(settings: Settings) -> None:
    path = logs.new_log_path(settings, 1, "a", 1)
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = logs.tail(settings, path, max_bytes=100)
    assert tail.endswith("line 999\n")
    assert all(line.startswith("line ") for line in tail.splitlines())
    assert logs.last_lines(settings, path, 2) == ["line 998", "line 999"]


def test_old_logs_are_pruned(settings: Settings) -> None:
    settings = settings.model_copy(update={"worker_logs_kept": 3})
    paths = [logs.new_log_path(settings, 7, "a", 1) for _ in range(5)]
    for path in paths:
        path.write_text("x")
    logs.prune_logs(settings, 7, keep={paths[0]})
    remaining = sorted(logs.deployment_log_dir(settings, 7).glob("*.log"))
    # The two oldest go, except a running worker's log, which is never deleted.
    assert remaining == [paths[0], *paths[2:]]
