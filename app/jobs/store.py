"""The `jobs` table: the only code that writes it.

A job is created `queued`, claimed `running` by the process that runs it (`herd jobs run
ID`), heartbeats while it works, and ends `succeeded`, `failed` or `cancelled`. A job whose
process died (kill -9, OOM, a crashed machine) stops heartbeating; `reap_stale` marks it
failed and removes the temporary files it had registered, so it can be started again.
"""

from __future__ import annotations

import enum
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from app.control import audit
from app.control.audit import Actor
from app.db.tables import Job

LOG_TAIL_CHARS = 4000
# A queued job whose process has not claimed it after this long never will (the start
# failed); generous, since a process starting on a busy machine can take a while.
QUEUED_START_S = 120.0


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobError(ValueError):
    """A job operation was refused; the message says why."""


@dataclass(frozen=True)
class JobView:
    """A job row as plain data, for pages and the CLI."""

    id: int
    kind: str
    state: str
    progress: float
    log_tail: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    started_by: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    pid: int | None
    host: str | None
    cancel_requested: bool

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state,
            progress=job.progress,
            log_tail=job.log_tail,
            params=dict(job.params or {}),
            result=dict(job.result) if job.result is not None else None,
            started_by=job.started_by,
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            heartbeat_at=job.heartbeat_at,
            pid=job.pid,
            host=job.host,
            cancel_requested=job.cancel_requested_at is not None,
        )


def tail(text: str, limit: int = LOG_TAIL_CHARS) -> str:
    """The last `limit` characters of text, cut at a line start."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    newline = cut.find("\n")
    return cut[newline + 1 :] if 0 <= newline < len(cut) - 1 else cut


def _remove(paths: list[str]) -> list[str]:
    """Remove the files that exist; the paths that could not be removed."""
    left = []
    for path in paths:
        try:
            Path(path).unlink(missing_ok=True)
        except OSError:
            left.append(path)
    return left


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (zombies count as dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class JobStore:
    """Create, claim, heartbeat, finish, cancel and reap jobs."""

    def __init__(self, engine: Engine, host: str | None = None) -> None:
        self.engine = engine
        self.host = host or socket.gethostname()

    def create(self, kind: str, params: dict[str, Any], started_by: str) -> int:
        """A queued job that Herd starts by itself (a batch's runner); an operator's job is
        started with `start`, which audits it."""
        with Session(self.engine) as session, session.begin():
            job = Job(kind=kind, params=params, started_by=started_by)
            session.add(job)
            session.flush()
            return job.id

    def start(self, kind: str, params: dict[str, Any], actor: Actor, action: str) -> int:
        """A queued job an operator asked for, recorded in the audit log as `action` (e.g.
        "evaluation.start") in the job's own transaction; its id."""
        with Session(self.engine) as session, session.begin():
            job = Job(kind=kind, params=params, started_by=actor.who)
            session.add(job)
            session.flush()
            audit.record(session.connection(), actor, action, "job", job.id, None, params)
            return job.id

    def get(self, job_id: int) -> JobView:
        with Session(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobError(f"no job {job_id}")
            return JobView.of(job)

    def recent(self, kind: str | None = None, limit: int = 50) -> list[JobView]:
        """The newest jobs first (of one kind, if given)."""
        query = select(Job).order_by(Job.id.desc()).limit(limit)
        if kind is not None:
            query = query.where(Job.kind == kind)
        with Session(self.engine) as session:
            return [JobView.of(job) for job in session.scalars(query)]

    def unfinished(self, kind: str) -> frozenset[int]:
        """The ids of the jobs of this kind that are queued or running."""
        query = select(Job.id).where(
            Job.kind == kind, Job.state.in_([JobState.QUEUED, JobState.RUNNING])
        )
        with self.engine.connect() as conn:
            return frozenset(conn.execute(query).scalars())

    def claim(self, job_id: int, pid: int | None = None) -> JobView:
        """queued -> running for this process; refuses a job that is not queued."""
        with Session(self.engine) as session, session.begin():
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                raise JobError(f"no job {job_id}")
            if job.state != JobState.QUEUED:
                raise JobError(f"job {job_id} is {job.state}, not queued")
            if job.cancel_requested_at is not None:
                raise JobError(f"job {job_id} was cancelled before it started")
            job.state = JobState.RUNNING
            job.pid = pid if pid is not None else os.getpid()
            job.host = self.host
            job.started_at = job.heartbeat_at = func.now()
            session.flush()
            return JobView.of(job)

    def add_scratch(self, job_id: int, path: Path) -> None:
        """Register a temporary file of the job, to be removed if the job dies."""
        with Session(self.engine) as session, session.begin():
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                raise JobError(f"no job {job_id}")
            job.scratch = [*job.scratch, str(path)]

    def heartbeat(self, job_id: int, progress: float, log_tail: str) -> bool:
        """Record that the job is alive, with its progress; True when a cancel was asked."""
        progress = min(1.0, max(0.0, progress))
        with self.engine.begin() as conn:
            row = conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.RUNNING)
                .values(heartbeat_at=func.now(), progress=progress, log_tail=tail(log_tail))
                .returning(Job.cancel_requested_at)
            ).first()
        # A row no longer running was finished by someone else (reaped): stop as if cancelled.
        return row is None or row[0] is not None

    def finish(
        self,
        job_id: int,
        state: JobState,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        log_tail: str | None = None,
    ) -> bool:
        """running -> a final state, removing its scratch files; False if it was not running."""
        if state not in FINISHED:
            raise JobError(f"{state} is not a final state")
        with Session(self.engine) as session, session.begin():
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.state in FINISHED:
                return False
            job.scratch = _remove(job.scratch)
            job.state = state
            job.error = error
            job.result = result
            job.finished_at = func.now()
            if state == JobState.SUCCEEDED:
                job.progress = 1.0
            if log_tail is not None:
                job.log_tail = tail(log_tail)
            return True

    def request_cancel(self, job_id: int, actor: Actor | None = None) -> JobView:
        """Cancel a job: a queued one at once, a running one when its process sees the flag.
        An operator's cancel (actor given) is an audit_log row; Herd's own is not."""
        with Session(self.engine) as session, session.begin():
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                raise JobError(f"no job {job_id}")
            if job.state in FINISHED:
                raise JobError(f"job {job_id} already {job.state}")
            before = {"kind": job.kind, "state": job.state}
            job.cancel_requested_at = func.now()
            if job.state == JobState.QUEUED:
                job.state = JobState.CANCELLED
                job.finished_at = func.now()
                job.error = "cancelled before it started"
            session.flush()
            session.refresh(job)
            if actor is not None:
                after = {"kind": job.kind, "state": job.state, "cancel_requested": True}
                conn = session.connection()
                audit.record(conn, actor, "job.cancel", "job", job.id, before, after)
            return JobView.of(job)

    def reap_stale(self, stale_s: float) -> list[int]:
        """Fail running jobs whose process is gone; the ids of the jobs reaped.

        A job on this host whose pid is dead is gone at once; any job whose heartbeat is older
        than stale_s is gone wherever it ran. Its scratch files are removed.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=stale_s)
        start_cutoff = datetime.now(UTC) - timedelta(seconds=max(stale_s, QUEUED_START_S))
        reaped = []
        with Session(self.engine) as session, session.begin():
            running = session.scalars(
                select(Job)
                .where(Job.state.in_([JobState.RUNNING, JobState.QUEUED]))
                .with_for_update(skip_locked=True)
            )
            for job in running:
                if job.state == JobState.QUEUED:
                    if job.created_at < start_cutoff:
                        job.state = JobState.FAILED
                        job.error = (
                            f"no process started the job within {max(stale_s, QUEUED_START_S):g} s"
                        )
                        job.finished_at = func.now()
                        reaped.append(job.id)
                    continue
                dead_here = (
                    job.host == self.host and job.pid is not None and not process_alive(job.pid)
                )
                silent = job.heartbeat_at is None or job.heartbeat_at < cutoff
                if not (dead_here or silent):
                    continue
                last = job.heartbeat_at.isoformat(timespec="seconds") if job.heartbeat_at else "-"
                how = "exited" if dead_here else f"stopped heartbeating for over {stale_s:g} s"
                job.scratch = _remove(job.scratch)
                job.state = JobState.FAILED
                job.error = (
                    f"the job's process (pid {job.pid} on {job.host}) {how} without finishing "
                    f"(killed?); last heartbeat {last}; its partial output was removed. "
                    "Start it again."
                )
                job.finished_at = func.now()
                reaped.append(job.id)
        return reaped
