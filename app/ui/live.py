"""Sections of a page that background jobs feed (a job list, the Models table, evaluation
results, datasets, batches): each is a fragment that refreshes itself while a job of its
kind is queued or running, and stops polling when none is.

When the set of unfinished jobs differs from what the page's last full run saw (a job
ended, or one was started from the CLI or another browser), the fragment runs the whole
page again: every section the job feeds then shows its end together, and each fragment is
registered anew with the polling that now fits (none once the jobs are done).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, update_wrapper
from typing import Any, ParamSpec

import streamlit as st

from app.jobs.store import JobStore
from app.ui import resources

# How often a section refreshes while a job it follows is queued or running.
REFRESH_S = 1.0

P = ParamSpec("P")


def unfinished_jobs(kind: str) -> frozenset[int]:
    """The ids of the queued and running jobs of this kind."""
    return JobStore(resources.database().engine).unfinished(kind)


def _follow(kind: str, seen: frozenset[int], render: Callable[[], None]) -> None:
    with resources.database_errors():
        if unfinished_jobs(kind) != seen:
            st.rerun(scope="app")
        render()


def follow_jobs(kind: str, render: Callable[[], None], *, idle_s: float | None = None) -> None:
    """Run render in a fragment that refreshes every REFRESH_S while a job of this kind is
    queued or running, and every idle_s otherwise (None: not at all); when jobs of the kind
    start or end, the whole page runs again."""
    with resources.database_errors():
        seen = unfinished_jobs(kind)
    every = REFRESH_S if seen else idle_s
    st.fragment(_follow, run_every=every)(kind, seen, render)


def follows_jobs(
    kind: str | None = None, *, idle_s: float | None = None
) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """follow_jobs as a decorator of a section: the jobs of `kind`, or (kind None) of the
    kind the section is given as its first argument."""

    def decorate(section: Callable[P, None]) -> Callable[P, None]:
        def followed(*args: P.args, **kwargs: P.kwargs) -> None:
            render: Callable[[], Any] = partial(section, *args, **kwargs)
            follow_jobs(str(args[0]) if kind is None else kind, render, idle_s=idle_s)

        update_wrapper(followed, section)
        return followed

    return decorate
