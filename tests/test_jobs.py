"""The jobs table's lifecycle against a real database: claim, heartbeat, cancel, reaping."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from app.cli import job_kinds
from app.db.database import Database
from app.db.tables import Job
from app.jobs.kinds import JobKind, JobKinds
from app.jobs.store import JobError, JobState, JobStore, tail


def test_a_job_is_claimed_once_and_heartbeats_until_it_finishes(database: Database) -> None:
    store = JobStore(database.engine)
    job_id = store.create("quantize", {"source": "a.gguf"}, "alice")
    assert store.get(job_id).state == "queued"
    job = store.claim(job_id)
    assert (job.state, job.host, job.started_by) == ("running", store.host, "alice")
    with pytest.raises(JobError, match="is running, not queued"):
        store.claim(job_id)
    assert store.heartbeat(job_id, 0.5, "line 1\nline 2") is False
    assert store.get(job_id).progress == 0.5
    assert store.finish(job_id, JobState.SUCCEEDED, result={"ok": 1})
    done = store.get(job_id)
    assert (done.state, done.progress, done.result) == ("succeeded", 1.0, {"ok": 1})
    assert done.finished_at is not None
    assert not store.finish(job_id, JobState.FAILED, error="late")  # final stays final
    with pytest.raises(JobError, match="already succeeded"):
        store.request_cancel(job_id)


def test_cancel_of_a_queued_job_is_immediate_and_of_a_running_one_is_a_flag(
    database: Database,
) -> None:
    store = JobStore(database.engine)
    queued = store.create("quantize", {}, "bob")
    assert store.request_cancel(queued).state == "cancelled"
    with pytest.raises(JobError, match="not queued"):
        store.claim(queued)
    running = store.create("quantize", {}, "bob")
    store.claim(running)
    view = store.request_cancel(running)
    assert (view.state, view.cancel_requested) == ("running", True)
    assert store.heartbeat(running, 0.1, "") is True  # the runner sees it on its next beat


def test_a_dead_job_process_is_reaped_with_its_scratch_files(
    database: Database, tmp_path: Path
) -> None:
    store = JobStore(database.engine)
    job_id = store.create("quantize", {}, "carol")
    # A real process that has ended: its pid is what the job recorded.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store.claim(job_id, pid=gone.pid)
    scratch = tmp_path / ".job-partial"
    scratch.write_bytes(b"half a model")
    store.add_scratch(job_id, scratch)
    assert store.reap_stale(stale_s=3600) == [job_id]
    job = store.get(job_id)
    assert job.state == "failed"
    assert f"pid {gone.pid}" in (job.error or "") and "partial output was removed" in (
        job.error or ""
    )
    assert not scratch.exists()
    assert store.reap_stale(stale_s=3600) == []


def test_a_silent_job_on_another_host_is_reaped_after_the_stale_time(database: Database) -> None:
    store = JobStore(database.engine)
    job_id = store.create("quantize", {}, "dave")
    JobStore(database.engine, host="elsewhere").claim(job_id, pid=1)
    assert store.reap_stale(stale_s=60) == []  # fresh heartbeat, and not our pid to check
    with database.engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(heartbeat_at=Job.heartbeat_at - timedelta(minutes=5))
        )
    assert store.reap_stale(stale_s=60) == [job_id]
    assert "stopped heartbeating" in (store.get(job_id).error or "")


def test_log_tail_keeps_the_end_at_a_line_start() -> None:
    text = "\n".join(f"line {i}" for i in range(1000))
    kept = tail(text, 100)
    assert len(kept) <= 100 and kept.startswith("line ") and kept.endswith("line 999")


def test_a_job_no_process_ever_claimed_is_failed_after_the_start_time(database: Database) -> None:
    store = JobStore(database.engine)
    job_id = store.create("quantize", {}, "erin")
    assert store.reap_stale(stale_s=1) == []  # just created: its process may be starting
    with database.engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(created_at=Job.created_at - timedelta(minutes=10))
        )
    assert store.reap_stale(stale_s=1) == [job_id]
    assert "no process started the job" in (store.get(job_id).error or "")


def test_every_job_kind_has_a_handler_in_the_registry() -> None:
    kinds = job_kinds()
    for kind in JobKind:
        assert callable(kinds.handler_for(kind)), kind
    with pytest.raises(ValueError, match="no job kind 'nope' is registered"):
        JobKinds({}).handler_for("nope")
