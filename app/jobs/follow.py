"""Follow jobs until they end (the CLI's progress bars), finding dead ones on the way."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.config import Settings
from app.control.audit import Actor
from app.jobs.spawn import spawn_job
from app.jobs.store import JobError, JobStore, JobView


def follow(
    settings: Settings,
    store: JobStore,
    job_ids: list[int],
    on_update: Callable[[JobView], None],
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> list[JobView]:
    """Poll the jobs, calling on_update with each row, until all have ended; the final rows.
    TimeoutError after timeout_s (the jobs go on)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        store.reap_stale(settings.job_stale_s)
        views = [store.get(job_id) for job_id in job_ids]
        for view in views:
            on_update(view)
        if all(view.finished for view in views):
            return views
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"still running after {timeout_s:g} s")
        time.sleep(poll_s)


def restart(settings: Settings, store: JobStore, job_id: int, actor: Actor) -> int:
    """Start a failed or cancelled job again, as a new job with the same parameters (a
    "job.restart" audit row)."""
    old = store.get(job_id)
    if old.state not in ("failed", "cancelled"):
        raise JobError(f"job {job_id} is {old.state}; only failed or cancelled jobs start again")
    new_id = store.start(old.kind, {**old.params, "restart_of": job_id}, actor, "job.restart")
    spawn_job(settings, new_id)
    return new_id
