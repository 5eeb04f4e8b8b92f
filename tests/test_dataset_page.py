"""The Retraining page's Datasets section under AppTest: build from the page's filters, see
the cleaning report, list, download; viewers see the list only; errors are shown, not raised."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from app.batches.records import BatchError
from app.batches.service import cancel_batch, get_batch
from app.control.accounts import Role
from app.db.database import Database
from app.db.tables import Dataset
from app.jobs.store import JobStore
from tests.analytics_data import insert_feedback, insert_messages, insert_requests, request_row
from tests.conftest import run_page
from tests.gateway_harness import wait_for

BUILD = "FormSubmitter:dataset_build-Build dataset"


def _log(db: Database) -> None:
    now = datetime.now(UTC)
    prompts = [
        "How tall is Mont Blanc?",
        "How tall is Mont Blanc?",
        "Mail me at a@b.example.com",
        "Name a prime number above ten",
        "Why is the sky blue in the day?",
    ]
    rows = [request_row(now - timedelta(minutes=10 + i), session_id=f"s{i}") for i in range(5)]
    insert_requests(db.engine, rows)
    insert_messages(
        db.engine,
        [
            {
                "request_id": r["id"],
                "response": "Answer " + str(i % 2),
                "prompt": [{"role": "user", "content": prompts[i]}],
            }
            for i, r in enumerate(rows)
        ],
    )
    insert_feedback(db.engine, [{"request_id": rows[0]["id"], "rating": -1, "user_id": "u"}])


def test_build_a_dataset_on_the_page(dashboard_env: None, database: Database) -> None:
    _log(database)
    app = run_page("retraining.py", Role.OPERATOR)
    assert any(h.value == "Datasets" for h in app.header)
    assert "No datasets yet." in [c.value for c in app.caption]
    app.text_input(key="ds_name").input("from-page")
    app.text_input(key="ds_split").input("0.6,0.2,0.2")
    app.button(key=BUILD).click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    assert any("Built dataset 'from-page': 4 rows." in s.value for s in app.success)
    # The list above the form has it at once, picked, with its report.
    assert "No datasets yet." not in [c.value for c in app.caption]
    assert list(app.dataframe[0].value["name"]) == ["from-page"]
    [report] = [d.value for d in app.dataframe if "step" in d.value.columns]
    removed = dict(zip(report["step"], report["removed"], strict=True))
    assert removed["near_duplicate"] == 1  # the same question, a different answer
    changed = dict(zip(report["step"], report["changed"], strict=True))
    assert changed["pii_redaction"] == 1
    with database.engine.connect() as conn:
        row = conn.execute(select(Dataset.name, Dataset.rows, Dataset.created_by)).one()
    assert tuple(row) == ("from-page", 4, "olivia")

    # Still listed on the next run, with its report and downloads.
    app.run()
    assert list(app.dataframe[0].value["name"]) == ["from-page"]
    labels = [b.proto.label for b in app.get("download_button")]
    assert "Download dataset (zip)" in labels and "Download card" in labels

    # A name in use, and a selection with nothing in it: errors on the page, nothing written.
    app.button(key=BUILD).click().run()
    assert any("exists already" in e.value for e in app.error)
    app.text_input(key="ds_name").input(f"other-{uuid.uuid4().hex[:6]}")
    app.selectbox(key="ds_rating").select("up")
    app.button(key=BUILD).click().run()
    assert any("matched no usable requests" in e.value for e in app.error), [
        e.value for e in app.error
    ] + [s.value for s in app.success]
    with database.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Dataset)).scalar_one() == 1


def test_viewers_see_datasets_but_no_build_form(dashboard_env: None, database: Database) -> None:
    app = run_page("retraining.py", Role.VIEWER)
    assert any(h.value == "Datasets" for h in app.header)
    assert not [b for b in app.button if b.key == BUILD]


def test_build_from_an_uploaded_file(dashboard_env: None, database: Database) -> None:
    app = run_page("retraining.py", Role.OPERATOR)
    app.text_input(key="ds_name").input("uploaded")
    app.radio(key="ds_source").set_value("Uploaded file")
    app.file_uploader(key="ds_upload").upload("bad.jsonl", b'{"prompt": "ok"}\n{oops\n')
    app.button(key=BUILD).click().run()
    assert not app.exception, app.exception
    assert any("line 2: not valid JSON" in e.value for e in app.error)
    assert not (Path(os.environ["HERD_HOME"]) / "datasets" / "uploaded").exists()
    good = b"\n".join(
        json.dumps(
            {
                "prompt": f"question number {i} about {w}",
                "response": f"answer {i}",
                "session_id": f"c{i // 2}",
            }
        ).encode()
        for i, w in enumerate(["rivers", "lakes", "seas", "hills", "woods", "plains"])
    )
    app.file_uploader(key="ds_upload").upload("good.jsonl", good)
    app.button(key=BUILD).click().run()
    assert not app.exception, app.exception
    assert any("Built dataset 'uploaded': 6 rows." in s.value for s in app.success)
    with database.engine.connect() as conn:
        source = conn.execute(select(Dataset.source)).scalar_one()
    assert source["type"] == "upload" and source["file"] == "good.jsonl"


def test_a_distillation_started_on_the_page_is_a_background_job(
    dashboard_env: None, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _log(database)
    # No gateway listens here (dashboard_env): the job's batch cannot move, so the page must
    # not wait for it. The batch's runner reads these from the environment it inherits.
    monkeypatch.setenv("HERD_JOB_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("HERD_BATCH_GIVE_UP_S", "60")
    app = run_page("retraining.py", Role.OPERATOR)
    app.text_input(key="ds_name").input("distilled")
    app.selectbox(key="ds_kind").select("distill")
    app.selectbox(key="ds_alias").select("chat")
    app.number_input(key="ds_tokens").set_value(4)
    began = time.monotonic()
    app.button(key=BUILD).click().run()
    took_s = time.monotonic() - began
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    [started] = [s.value for s in app.success if s.value.startswith("Started job")]
    job_id = int(started.split()[2].rstrip(":"))
    assert "distill dataset 'distilled'" in started and took_s < 30
    jobs = JobStore(database.engine)
    try:
        # The job selected and cleaned the prompts and made its batch; it waits for it.
        wait_for(lambda: "batch batch_" in (jobs.get(job_id).log_tail or ""), timeout_s=60)
        assert jobs.get(job_id).state == "running"
        # Another session (a reload) sees the job with its progress bar.
        again = run_page("retraining.py", Role.OPERATOR)
        label = f"Job {job_id} · dataset distilled · running · by olivia"
        assert any(label in m.value for m in again.markdown), [m.value for m in again.markdown]
        assert again.get("progress"), "no progress bar for the running job"
        with database.engine.connect() as conn:
            [batch_id] = conn.execute(text("SELECT id FROM batches")).scalars().all()
            lines = conn.execute(text("SELECT count(*) FROM batch_requests")).scalar_one()
        assert lines == 4  # the five logged prompts, one exact duplicate removed
        # The job's Cancel button ends the job, and its batch with it.
        again.button(key=f"job_cancel_{job_id}").click().run()
        assert not again.exception, again.exception
        wait_for(lambda: jobs.get(job_id).finished, timeout_s=60, step_s=0.2)
        assert jobs.get(job_id).state == "cancelled"
        wait_for(lambda: get_batch(database.engine, batch_id).status == "cancelled", timeout_s=60)
    finally:
        with database.engine.connect() as conn:
            batch_ids = conn.execute(text("SELECT id FROM batches")).scalars().all()
        for batch in batch_ids:
            with contextlib.suppress(BatchError):  # one already cancelled refuses
                cancel_batch(database.engine, batch)
    wait_for(lambda: all(j.finished for j in jobs.recent("batch")), timeout_s=60, step_s=0.2)
    final = run_page("retraining.py", Role.OPERATOR)
    assert any(f"Job {job_id} · dataset distilled · cancelled" in m.value for m in final.markdown)
