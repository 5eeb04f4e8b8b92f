"""The Batches page's live list: progress, throughput, ETA, errors, cancel and downloads.

It reads `batches` and `batch_requests` on every refresh, so it shows the same state after
a reload, in another browser, or for a batch submitted with the CLI or the API. It refreshes
every second while a batch's runner job is queued or running, and every IDLE_S otherwise,
to notice batches submitted elsewhere (app/ui/live.py).
"""

from __future__ import annotations

import streamlit as st

from app.batches.owner import OPERATOR
from app.batches.progress import progress, resends
from app.batches.records import BatchError, BatchView
from app.batches.store import BatchStore
from app.control.audit import Actor
from app.jobs.kinds import JobKind
from app.ui import resources
from app.ui.live import follows_jobs

# With no batch running, the list looks for new ones this often.
IDLE_S = 5.0


def batch_store() -> BatchStore:
    return BatchStore(resources.database().engine)


def _progress_text(view: BatchView) -> str:
    p = progress(view)
    parts = [f"{p.done}/{p.total} lines", f"{view.completed} completed", f"{view.failed} failed"]
    if view.cancelled:
        parts.append(f"{view.cancelled} not sent")
    if view.resends:
        parts.append(resends(view))
    if p.lines_per_s:
        parts.append(f"{p.lines_per_s:.2f} lines/s")
    if p.eta_s is not None and not view.finished:
        parts.append(f"ETA {p.eta_s:.0f} s")
    return " · ".join(parts)


def _show(view: BatchView, store: BatchStore, actor: Actor | None) -> None:
    with st.container(border=True):
        st.markdown(f"**{view.id}** · {view.endpoint} · **{view.status}** · by {view.created_by}")
        st.progress(progress(view).fraction, text=_progress_text(view))
        if view.errors:
            for error in view.errors.get("data", []):
                st.error(f"{error.get('code')}: {error.get('message')}")
        if (
            actor is not None
            and view.status in ("validating", "in_progress")
            and st.button("Cancel", key=f"batch_cancel_{view.id}")
        ):
            try:
                store.request_cancel(view.id, OPERATOR, actor)
            except BatchError as exc:
                st.error(str(exc))
        if view.finished:
            cols = st.columns(2)
            for col, purpose, label, count in (
                (cols[0], "batch_output", "Download output", view.completed),
                (cols[1], "batch_errors", "Download errors", view.failed + view.cancelled),
            ):
                col.download_button(
                    f"{label} ({count})", data=_file(view.id, purpose) if count else b"",
                    file_name=f"{view.id}_{purpose.removeprefix('batch_')}.jsonl",
                    mime="application/jsonl", key=f"batch_{purpose}_{view.id}",
                    disabled=not count,
                )  # fmt: skip


# A finished batch's files never change: rendered once, not on every refresh of the list.
@st.cache_data(ttl=600, max_entries=40, show_spinner=False)
def _file(batch_id: str, purpose: str) -> bytes:
    return b"".join(batch_store().rendered(batch_id, purpose))


@follows_jobs(JobKind.BATCH.value, idle_s=IDLE_S)
def batches_panel(actor: Actor | None, limit: int = 20) -> None:
    """The newest batches; with an actor (the operator on this page), cancel buttons."""
    with resources.database_errors():
        store = batch_store()
        views, _ = store.page(OPERATOR, limit=limit)
    if not views:
        st.caption("No batches yet.")
        return
    for view in views:
        _show(view, store, actor)
