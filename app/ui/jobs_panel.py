"""A live list of background jobs: progress bars, log tails, cancel and start-again buttons.

It reads the `jobs` table on every refresh, so it shows the same state after a page reload,
in another browser, or for a job started from the CLI. It refreshes every second while a
job of its kind is queued or running, and every IDLE_S otherwise, to notice jobs started
elsewhere (app/ui/live.py).
"""

from __future__ import annotations

import streamlit as st

from app.control.audit import Actor
from app.jobs.follow import restart
from app.jobs.store import JobError, JobStore, JobView
from app.ui import resources
from app.ui.job_results import describe_result, job_target
from app.ui.live import follows_jobs
from app.ui.tables import readable

# With no job of its kind queued or running, the list looks for new ones this often.
IDLE_S = 5.0


def job_store() -> JobStore:
    return JobStore(resources.database().engine)


def _label(job: JobView) -> str:
    return f"Job {job.id} · {job.kind} {job_target(job.params)} · {job.state} · by {job.started_by}"


def _show(job: JobView, store: JobStore, actor: Actor | None) -> None:
    with st.container(border=True):
        st.markdown(f"**{_label(job)}**")
        if job.state in ("queued", "running"):
            text = "cancelling ..." if job.cancel_requested else f"{job.progress * 100:.0f}%"
            st.progress(job.progress, text=text)
        elif job.state == "succeeded":
            result = describe_result(job.kind, job.result)
            st.success(f"Succeeded: {result.sentence}")
            if result.table:
                st.dataframe(readable(result.table), hide_index=True, key=f"job_result_{job.id}")
        else:
            st.error(f"{job.state.capitalize()}: {job.error}")
        if job.log_tail:
            with st.expander("Log"):
                st.code(job.log_tail, language=None)
        if actor is None:
            return
        if (
            not job.finished
            and not job.cancel_requested
            and st.button("Cancel", key=f"job_cancel_{job.id}")
        ):
            try:
                store.request_cancel(job.id, actor)
            except JobError as exc:
                st.error(str(exc))
        if job.state in ("failed", "cancelled") and st.button(
            "Start again", key=f"job_restart_{job.id}"
        ):
            try:
                new_id = restart(resources.settings(), store, job.id, actor)
                st.info(f"Started job {new_id}.")
            except JobError as exc:
                st.error(str(exc))


@follows_jobs(idle_s=IDLE_S)
def jobs_panel(kind: str, actor: Actor | None, limit: int = 10) -> None:
    """The newest jobs of one kind; actor (the operator on this page) None shows them
    without buttons."""
    with resources.database_errors():
        store = job_store()
        store.reap_stale(resources.settings().job_stale_s)
        jobs = store.recent(kind, limit)
    if not jobs:
        st.caption("No jobs yet.")
        return
    for job in jobs:
        _show(job, store, actor)
