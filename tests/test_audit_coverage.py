"""Every change is an audit row, in one vocabulary: `via` (page, cli, api, apply, system)
and `origin` (the page, the command or the API route), apart from `source` (the client's
address or the host). Here: the actions that left no row before (evaluations, batches and
their cancels, dataset builds, job cancel and restart, the first admin account), each made
the way an operator makes it, and the backfill of older rows."""

from __future__ import annotations

import contextlib
import getpass
import json
import re
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app.batches.owner import OPERATOR
from app.batches.records import BatchError
from app.batches.service import create_batch
from app.batches.store import BatchStore
from app.compress.quantize import QuantizeRequest
from app.config import Settings
from app.control.accounts import Role
from app.control.audit import Actor, Via, read_audit, record
from app.db import migrate
from app.db.database import Database
from app.db.engine import make_engine
from app.evaluation.plan import EvalRequest
from app.jobs.store import JobError, JobStore
from app.processes.launcher import prepare
from app.store.catalog import ModelStore
from tests.analytics_data import insert_requests, request_row
from tests.batch_harness import batch_gateway, chat_line, openai_client, write_jsonl
from tests.conftest import free_port, run_herd, run_page
from tests.gateway_harness import wait_for

PROMPTS = [f"Question number {i} about {w}?" for i, w in enumerate(["rivers", "lakes", "hills"])]


def changes(engine: Engine, actor: str) -> list[tuple[str, str, str | None]]:
    """The actor's audit rows, oldest first, as (action, via, origin)."""
    rows = read_audit(engine, actor=actor)
    return [(r.action, r.via, r.origin) for r in reversed(rows)]


def settle(database: Database) -> None:
    """Stop, without an audit row, what the actions started (their jobs' processes and the
    batches' runners), and wait until every job has ended."""
    store = BatchStore(database.engine)
    for view in store.page(OPERATOR, limit=100)[0]:
        with contextlib.suppress(BatchError):
            store.request_cancel(view.id, OPERATOR)
    jobs = JobStore(database.engine)
    for job in jobs.recent(limit=100):
        if not job.finished and job.kind != "batch":
            with contextlib.suppress(JobError):
                jobs.request_cancel(job.id)
    wait_for(lambda: all(j.finished for j in jobs.recent(limit=100)), timeout_s=120, step_s=0.2)


def write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "response": "An answer."}) + "\n"
                            for p in PROMPTS))  # fmt: skip
    return path


def test_cli_changes_are_audited_with_their_commands(
    database: Database,
    herd_env: dict[str, str],
    models_dir: Path,
    tmp_path: Path,
    tiny_gguf: Callable[..., Path],
) -> None:
    # No gateway listens here: a distillation's or a batch's requests cannot move.
    env = {**herd_env, "HERD_GATEWAY_URL": f"http://127.0.0.1:{free_port()}",
           "HERD_JOB_HEARTBEAT_S": "0.2", "HERD_BATCH_GIVE_UP_S": "60"}  # fmt: skip
    ModelStore(database.engine, models_dir).add(tiny_gguf("t.gguf"))
    jobs = JobStore(database.engine)

    def herd(*args: str) -> str:
        done = run_herd(*args, "--by", "eve", env=env)
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    try:
        herd("eval", "t.gguf", "--no-wait")
        # A job nobody runs, cancelled and started again from the CLI.
        idle = jobs.create("quantize", QuantizeRequest("missing.gguf", "Q8_0").params(), "eve")
        herd("jobs", "cancel", str(idle))
        herd("jobs", "restart", str(idle), "--no-wait")
        prompts = write_prompts(tmp_path / "rows.jsonl")
        herd("dataset", "build", "cli-set", "--from-file", str(prompts))
        herd("dataset", "distill", "d", "--teacher", "chat", "--from-file", str(prompts),
             "--no-wait")  # fmt: skip
        lines = write_jsonl(tmp_path / "batch.jsonl", [chat_line("one"), chat_line("two")])
        submitted = herd("batch", "submit", str(lines), "--no-wait")
        match = re.search(r"submitted (batch_\w+)", submitted)
        assert match is not None, submitted
        herd("batch", "cancel", match.group(1))
    finally:
        settle(database)

    assert changes(database.engine, "eve") == [
        ("evaluation.start", "cli", "herd eval"),
        ("job.cancel", "cli", "herd jobs cancel"),
        ("job.restart", "cli", "herd jobs restart"),
        ("dataset.build", "cli", "herd dataset build"),
        ("dataset.distill", "cli", "herd dataset distill"),
        ("batch.create", "cli", "herd batch submit"),
        ("batch.cancel", "cli", "herd batch cancel"),
    ]
    rows = read_audit(database.engine, actor="eve")
    assert {r.source for r in rows} == {socket.gethostname()}
    # Herd's own work (the batch runner's jobs, a distillation's batch) is no change.
    assert len(read_audit(database.engine)) == len(rows)
    [restart] = read_audit(database.engine, origin="herd jobs restart")
    assert restart.after["restart_of"] == idle
    [build] = read_audit(database.engine, action="dataset.build")
    assert (build.target_kind, build.target_id) == ("dataset", "cli-set")
    assert build.after["split_rows"] and build.after["kind"] == "sft"


@pytest.fixture
def page_env(dashboard_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # The jobs and batch runners a page starts inherit these.
    monkeypatch.setenv("HERD_JOB_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("HERD_BATCH_GIVE_UP_S", "60")


def test_page_changes_are_audited_with_their_page(
    page_env: None, database: Database, models_dir: Path, tiny_gguf: Callable[..., Path]
) -> None:
    ModelStore(database.engine, models_dir).add(tiny_gguf("t.gguf"))
    # One logged call, so that the page offers the alias "chat" as a teacher.
    insert_requests(database.engine, [request_row(datetime.now(UTC), alias="chat")])
    jobs = JobStore(database.engine)
    try:
        evaluation = run_page("evaluation.py", Role.OPERATOR)
        evaluation.multiselect(key="eval_models").select("t.gguf")
        evaluation.button(key="FormSubmitter:evaluate-Evaluate").click().run()
        assert not evaluation.exception, evaluation.exception
        assert any(s.value.startswith("Started job") for s in evaluation.success)
        # The jobs panel's buttons on a job no process runs: cancel it, start it again.
        idle = jobs.create("evaluate", EvalRequest(("t.gguf",)).params(), "olivia")
        evaluation.run()
        evaluation.button(key=f"job_cancel_{idle}").click().run()
        assert not evaluation.exception, evaluation.exception
        assert jobs.get(idle).state == "cancelled"
        evaluation.run()
        evaluation.button(key=f"job_restart_{idle}").click().run()
        assert not evaluation.exception, evaluation.exception

        batches = run_page("batches.py", Role.OPERATOR)
        batch_file = b"".join(json.dumps(chat_line(f"l{i}")).encode() + b"\n" for i in range(2))
        batches.file_uploader[0].upload("lines.jsonl", batch_file)
        batches.button(key="FormSubmitter:batch_submit-Submit batch").click().run()
        assert not batches.exception, batches.exception
        [submitted] = [s.value for s in batches.success]
        batch_id = submitted.split()[1].rstrip(".")
        batches.run()
        batches.button(key=f"batch_cancel_{batch_id}").click().run()
        assert not batches.exception, batches.exception

        retraining = run_page("retraining.py", Role.OPERATOR)
        retraining.text_input(key="ds_name").input("page-set")
        retraining.radio(key="ds_source").set_value("Uploaded file")
        rows = b"".join(json.dumps({"prompt": p, "response": "An answer."}).encode() + b"\n"
                        for p in PROMPTS)  # fmt: skip
        retraining.file_uploader(key="ds_upload").upload("rows.jsonl", rows)
        retraining.button(key="FormSubmitter:dataset_build-Build dataset").click().run()
        assert not retraining.exception, retraining.exception
        assert any("Built dataset 'page-set'" in s.value for s in retraining.success)
        retraining.text_input(key="ds_name").input("page-distilled")
        retraining.selectbox(key="ds_kind").select("distill")
        retraining.selectbox(key="ds_alias").select("chat")
        retraining.button(key="FormSubmitter:dataset_build-Build dataset").click().run()
        assert not retraining.exception, retraining.exception
        assert any(s.value.startswith("Started job") for s in retraining.success)
    finally:
        settle(database)

    assert changes(database.engine, "olivia") == [
        ("evaluation.start", "page", "evaluation"),
        ("job.cancel", "page", "evaluation"),
        ("job.restart", "page", "evaluation"),
        ("batch.create", "page", "batches"),
        ("batch.cancel", "page", "batches"),
        ("dataset.build", "page", "retraining"),
        ("dataset.distill", "page", "retraining"),
    ]
    # Herd's own work (batch runners, the distillation's batch) is no change.
    assert len(read_audit(database.engine)) == len(read_audit(database.engine, actor="olivia"))


def test_api_batches_are_audited_with_their_route(tmp_path: Path, database: Database) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"l{i}") for i in range(3)])
    with batch_gateway(tmp_path, database.url) as gateway:
        client = openai_client(gateway.v1)
        uploaded = client.files.create(file=source.open("rb"), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        # Cancelled before its runner (a process of its own) has started.
        assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
        wait_for(lambda: client.batches.retrieve(batch.id).status == "cancelled", timeout_s=60)
        settle(database)
    rows = read_audit(database.engine)
    assert [(r.action, r.via, r.origin, r.target_id) for r in reversed(rows)] == [
        ("batch.create", "api", "POST /v1/batches", batch.id),
        ("batch.cancel", "api", "POST /v1/batches/{batch_id}/cancel", batch.id),
    ]
    assert {(r.actor, r.source) for r in rows} == {("anonymous", "127.0.0.1")}


def test_the_first_admin_of_herd_up_is_audited_once(database: Database, settings: Settings) -> None:
    assert prepare(settings, database).admin_password is not None
    assert prepare(settings, database).admin_password is None
    [created] = read_audit(database.engine)
    assert (created.action, created.target_id, created.via, created.origin) == (
        "user.create", "admin", "cli", "herd up")  # fmt: skip
    assert (created.actor, created.source) == (getpass.getuser(), socket.gethostname())
    assert created.after == {"name": "admin", "role": "admin", "disabled": False}


def test_a_distillations_own_batch_is_no_audited_change(
    database: Database, settings: Settings
) -> None:
    # What Herd makes for a job of its own (no actor) leaves no row; the job's start did.
    batch_id = create_batch(
        settings, database.engine, alias="teacher", bodies=[{"messages": []}], start=False
    )
    BatchStore(database.engine).request_cancel(batch_id, OPERATOR)
    assert read_audit(database.engine) == []


# ---- revision 0020: the old mixed `source` split into origin and source -------------------

OLD_ROWS = [
    # (via, source, action, target_id) as revisions before 0020 wrote them
    ("page", "page:models", "model.add", "a.gguf"),
    ("page", "rollouts", "rollout.canary", "chat"),  # started on the Evaluation page
    ("page", "rollouts", "rollout.promote", "chat"),
    ("cli", "rollouts", "rollout.rollback", "chat"),
    ("system", "rollouts", "rollout.auto_rollback", "chat"),
    ("apply", "build-host", "deployment.create", "7"),
    ("cli", "build-host", "key.create", "3"),
    ("api", "10.0.0.9", "user.create", "ann"),
]
BACKFILLED = [
    # (via, origin, source) after 0020
    ("page", "models", None),
    ("page", "evaluation", None),
    ("page", "rollouts", None),
    ("cli", "herd rollout rollback", None),
    ("system", "canary guard", None),
    ("apply", "herd apply", "build-host"),
    ("cli", None, "build-host"),
    ("api", None, "10.0.0.9"),
]


def test_revision_0020_backfills_origin_from_the_old_source(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, "0019")
    engine = make_engine(empty_db_url)
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    try:
        with engine.begin() as conn:
            for k, (via, source, action, target) in enumerate(OLD_ROWS):
                conn.execute(
                    text("INSERT INTO audit_log (at, actor, via, source, action, target_kind, "
                         "target_id) VALUES (:at, 'olivia', :via, :source, :action, 'x', :t)"),
                    {"at": at.replace(minute=k), "via": via, "source": source,
                     "action": action, "t": target},
                )  # fmt: skip
            # The canary's own record, written in the same transaction (the same now()).
            conn.execute(
                text("INSERT INTO rollouts (alias, action, before, after, signals, decided_by, "
                     "created_at) VALUES ('chat', 'canary', '[]', '[]', :signals, 'olivia', "
                     ":at)"),
                {"signals": json.dumps({"started_from": "evaluation", "percent": 5}),
                 "at": at.replace(minute=1)},
            )  # fmt: skip
        migrate.upgrade(empty_db_url)
        query = text("SELECT via, origin, source FROM audit_log ORDER BY at")
        with engine.connect() as conn:
            assert [tuple(r) for r in conn.execute(query)] == BACKFILLED

        migrate.downgrade(empty_db_url, "0019")
        with engine.connect() as conn:
            sources = conn.execute(text("SELECT source FROM audit_log ORDER BY at")).scalars()
            assert list(sources) == [source for _, source, _, _ in OLD_ROWS]
    finally:
        engine.dispose()


def test_the_audit_page_shows_and_filters_via_and_origin(
    dashboard_env: None, database: Database
) -> None:
    with database.engine.begin() as conn:
        record(conn, Actor("eve", Via.CLI, "host-a", "herd eval"), "evaluation.start", "job",
               1, None, {})  # fmt: skip
        record(conn, Actor("olivia", Via.PAGE, "10.0.0.2", "batches"), "batch.create", "batch",
               "batch_x", None, {})  # fmt: skip
    app = run_page("audit.py", Role.ADMIN)
    table = app.dataframe[0].value
    assert list(table["via"]) == ["page", "cli"]
    assert list(table["origin"]) == ["batches", "herd eval"]
    assert list(table["source"]) == ["10.0.0.2", "host-a"]
    app.selectbox(key="audit_via").select("cli").run()
    assert list(app.dataframe[0].value["origin"]) == ["herd eval"]
    app.selectbox(key="audit_via").select("(any)")
    app.selectbox(key="audit_origin").select("batches").run()
    assert list(app.dataframe[0].value["who"]) == ["olivia"]
