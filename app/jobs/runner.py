"""Run one job in this process: claim it, heartbeat, watch for a cancel, record the end."""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.config import Settings
from app.db.database import Database
from app.jobs.kinds import JobKinds
from app.jobs.store import JobState, JobStore, JobView

log = logging.getLogger(__name__)

LOG_LINES = 60
# Exit status of a job process that stopped because it was cancelled.
CANCELLED_EXIT = 3


class JobFailed(Exception):
    """The job cannot complete; the message is what operators read in the job's error."""


class JobCancelled(Exception):
    """The job saw a cancel request and stopped."""


class JobContext:
    """What a job handler gets: its row, settings, database, and ways to report and clean up."""

    def __init__(self, job: JobView, settings: Settings, db: Database, store: JobStore) -> None:
        self.job = job
        self.settings = settings
        self.db = db
        self.store = store
        self.progress = 0.0
        self.cancel_requested = threading.Event()
        self._lines: deque[str] = deque(maxlen=LOG_LINES)
        self._lines_lock = threading.Lock()
        # Held while output is put in place, and by a cancel: one of the two wins.
        self._commit_lock = threading.Lock()
        self._committed = False
        self._on_cancel: list[Callable[[], object]] = []

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def log(self, line: str) -> None:
        """Add a line to the job's log tail (shown on pages, kept in the row)."""
        with self._lines_lock:
            self._lines.append(line.rstrip())

    def log_text(self) -> str:
        with self._lines_lock:
            return "\n".join(self._lines)

    def set_progress(self, fraction: float) -> None:
        self.progress = min(1.0, max(0.0, fraction))

    def add_scratch(self, path: Path) -> None:
        """Register a temporary file: removed when the job ends or is found dead."""
        self.store.add_scratch(self.job.id, path)

    def on_cancel(self, stop: Callable[[], object]) -> None:
        """Call stop() if the job is cancelled, before its process ends: to stop work the
        job started elsewhere (a batch on the fleet), which would otherwise go on."""
        self._on_cancel.append(stop)

    def run_cancel_hooks(self) -> None:
        for stop in self._on_cancel:
            try:
                stop()
            except Exception as exc:  # the cancel itself must still be recorded
                self.log(f"on cancel: {type(exc).__name__}: {exc}")

    def check_cancel(self) -> None:
        """Raise JobCancelled if a cancel was requested (for handlers that can stop between
        steps)."""
        if self.cancel_requested.is_set():
            raise JobCancelled("cancelled")

    @contextmanager
    def committing(self) -> Iterator[None]:
        """Hold off a cancel while the job's output is put in place: after this block the
        job has succeeded, whatever is asked meanwhile."""
        with self._commit_lock:
            self.check_cancel()
            yield
            self._committed = True

    def abandon_if_cancelled(self) -> bool:
        """Called by the heartbeat thread on a cancel request: record the cancel and stop
        this process at once, unless the output is already committed. Returns False when the
        job got past its commit first."""
        with self._commit_lock:
            if self._committed:
                return False
            self.run_cancel_hooks()
            self.store.finish(
                self.job.id,
                JobState.CANCELLED,
                error="cancelled by an operator",
                log_tail=self.log_text() + "\ncancelled",
            )
            # The handler may be inside llama.cpp, which cannot be interrupted: end the process.
            # Its scratch files were removed by finish(); nothing was put in place.
            os._exit(CANCELLED_EXIT)


def _heartbeat(ctx: JobContext, stop: threading.Event) -> None:
    while not stop.wait(ctx.settings.job_heartbeat_s):
        try:
            cancel = ctx.store.heartbeat(ctx.job.id, ctx.progress, ctx.log_text())
        except Exception as exc:  # the database may be briefly away; the next beat retries
            log.warning("job %s heartbeat failed: %s", ctx.job.id, exc)
            continue
        if cancel:
            ctx.cancel_requested.set()
            ctx.abandon_if_cancelled()


def run_job(settings: Settings, job_id: int, kinds: JobKinds) -> JobView:
    """Run job_id in this process until it ends, with its kind's handler from the registry
    the process was given (app/cli.py builds it from the kind packages); its final row."""
    with Database.open(settings) as db:
        store = JobStore(db.engine)
        job = store.claim(job_id)
        handler = kinds.handler_for(job.kind)
        ctx = JobContext(job, settings, db, store)
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(ctx, stop), daemon=True)
        beat.start()
        try:
            result = handler(ctx)
        except JobCancelled:
            ctx.run_cancel_hooks()
            store.finish(job_id, JobState.CANCELLED, error="cancelled by an operator",
                         log_tail=ctx.log_text())  # fmt: skip
        except JobFailed as exc:
            ctx.log(f"failed: {exc}")
            store.finish(job_id, JobState.FAILED, error=str(exc), log_tail=ctx.log_text())
        except Exception as exc:
            ctx.log(traceback.format_exc())
            store.finish(job_id, JobState.FAILED, error=f"{type(exc).__name__}: {exc}",
                         log_tail=ctx.log_text())  # fmt: skip
        else:
            store.finish(job_id, JobState.SUCCEEDED, result=result, log_tail=ctx.log_text())
        finally:
            stop.set()
            beat.join()
        return store.get(job_id)
