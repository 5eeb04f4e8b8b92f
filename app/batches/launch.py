"""Give every unfinished batch a live runner: start one for a new batch, and start it again
when its process died (kill -9, a crash, a reboot): the new runner resumes where the batch
was, since every line's state is in PostgreSQL.

Gateways call `resume_batches` every HERD_BATCH_WATCH_S; two gateways never both start a
runner for one batch (the hand-over is a conditional update).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.batches.store import BatchStore
from app.config import Settings
from app.jobs.kinds import JobKind
from app.jobs.spawn import spawn_job
from app.jobs.store import JobError, JobStore

log = logging.getLogger(__name__)

# A batch whose runner was started this often and still is not done fails: something other
# than a passing fault stops it (the runner's job log says what).
MAX_RUNNER_STARTS = 20


def _runner_needed(jobs: JobStore, job_id: int | None) -> bool:
    if job_id is None:
        return True
    try:
        return jobs.get(job_id).finished
    except JobError:
        return True


def ensure_runner(
    engine: Engine, settings: Settings, batch_id: str, job_id: int | None, starts: int
) -> int | None:
    """Start a runner for the batch unless its current one lives; the new job's id."""
    jobs = JobStore(engine)
    if not _runner_needed(jobs, job_id):
        return None
    batches = BatchStore(engine)
    if starts >= MAX_RUNNER_STARTS:
        batches.fail(batch_id, f"its runner was started {starts} times without finishing")
        return None
    new_id = jobs.create(JobKind.BATCH, {"batch_id": batch_id, "target": batch_id}, "batch")
    if not batches.hand_to(batch_id, job_id, new_id):
        jobs.request_cancel(new_id)  # another gateway started one first
        return None
    spawn_job(settings, new_id)
    log.info("batch %s: runner job %d started", batch_id, new_id)
    return new_id


def resume_batches(engine: Engine, settings: Settings) -> list[int]:
    """Start runners for unfinished batches whose runner is gone; the new job ids."""
    batches = BatchStore(engine)
    unfinished = batches.unfinished()
    if not unfinished:
        return []
    # A runner killed on this host is found at once; elsewhere by its silent heartbeat.
    JobStore(engine).reap_stale(settings.job_stale_s)
    started = []
    for batch_id, job_id, starts in unfinished:
        new_id = ensure_runner(engine, settings, batch_id, job_id, starts)
        if new_id is not None:
            started.append(new_id)
    return started


async def watch_batches(engine: Engine, settings: Settings) -> None:
    """The gateway's background task: resume_batches every HERD_BATCH_WATCH_S."""
    while True:
        try:
            await asyncio.to_thread(resume_batches, engine, settings)
        except SQLAlchemyError as exc:  # the database is away: try again next round
            log.warning("batch watch: %s", exc)
        except Exception:
            log.exception("batch watch failed")
        await asyncio.sleep(settings.batch_watch_s)
