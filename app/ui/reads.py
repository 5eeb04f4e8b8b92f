"""Query results the pages share, cached for a few seconds per database and arguments.

A page reruns on every click; without this each rerun repeated every query. A page that
writes clears the reads its write changes, so an operator sees their change at once. A query
that raises is not cached: the next run asks the database again (and the page shows
'database unavailable' meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from functools import update_wrapper
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import streamlit as st
from sqlalchemy import Engine
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from app.analytics import (
    catalog,
    decisions,
    key_usage,
    monitoring,
    overview,
    recommend,
    review,
    semantic_cache,
    summary,
    versions,
)
from app.ui import resources

# How long a result is reused: short enough that a page never looks stale to a person, long
# enough that the reruns of one interaction (a click, a widget change) share one query.
READ_TTL_S = 5.0
# Results kept per query: each distinct filter combination a visitor picks is one entry.
MAX_ENTRIES = 64
# Queries a page asks at once (prefetch): each holds a pooled connection while it runs.
PREFETCH_THREADS = 4

P = ParamSpec("P")
R = TypeVar("R")


class CachedRead(Generic[P, R]):
    """A query of app/ that takes the engine first, called without it and cached by its
    other arguments and the dashboard's database."""

    def __init__(self, query: Callable[Concatenate[Engine, P], R]) -> None:
        def run(database: str, *args: P.args, **kwargs: P.kwargs) -> R:
            return query(resources.database().engine, *args, **kwargs)

        # Streamlit keys a cache by the function's module, name and source: take the query's,
        # or every read made here would share one cache.
        update_wrapper(run, query)
        self._cached = st.cache_data(ttl=READ_TTL_S, max_entries=MAX_ENTRIES, show_spinner=False)(
            run
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self._cached(resources.database_key(), *args, **kwargs)
        return result

    def clear(self) -> None:
        """Forget every cached result of this query (after a write that changes it)."""
        self._cached.clear()


def prefetch(*calls: tuple[CachedRead[..., Any], tuple[Any, ...]]) -> None:
    """Ask these reads at the same time, so that the page's own calls, one after the other,
    find them cached: a cold page then waits for its slowest query, not for their sum.
    Failures are left to those calls, which raise them where the page handles them."""
    context = get_script_run_ctx()

    def ask(read: CachedRead[..., Any], args: tuple[Any, ...]) -> None:
        add_script_run_ctx(ctx=context)  # so Streamlit treats the thread as the page's
        with suppress(Exception):  # asked again, and handled, by the page's own call
            read(*args)

    with ThreadPoolExecutor(max_workers=PREFETCH_THREADS) as pool:
        for read, args in calls:
            pool.submit(ask, read, args)


def now(key: str) -> datetime:
    """The end of a range 'ending now' on the picker `key`: the same instant for READ_TTL_S
    in this session, so the reruns of one interaction ask for the same range and reuse its
    results; then the current time again. What it shows is at most READ_TTL_S old."""
    pinned = st.session_state.get(f"{key}_range_now")
    current = datetime.now(UTC)
    if not isinstance(pinned, datetime) or current - pinned >= timedelta(seconds=READ_TTL_S):
        pinned = current
        st.session_state[f"{key}_range_now"] = pinned
    return pinned


# Monitoring, Retraining and Feedback review.
filter_options = CachedRead(versions.filter_options)
tiles = CachedRead(summary.tiles)
requests_by_class = CachedRead(catalog.requests_by_class)
latency_series = CachedRead(monitoring.latency_series)
traffic_series = CachedRead(monitoring.traffic_series)
engagement_series = CachedRead(monitoring.engagement_series)
session_series = CachedRead(monitoring.session_series)
semantic_cache_rows = CachedRead(semantic_cache.semantic_cache_rows)
compare_versions = CachedRead(versions.compare_versions)
key_usage_rows = CachedRead(key_usage.key_usage)
assess_versions = CachedRead(recommend.assess_versions)
list_decisions = CachedRead(decisions.list_decisions)
list_rated = CachedRead(review.list_rated)
conversation = CachedRead(review.conversation)
# Overview.
fleet_summary = CachedRead(overview.fleet_summary)
process_restarts = CachedRead(overview.process_restarts)
