"""Process-wide resources for the dashboard, cached by Streamlit across reruns and sessions."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st
from sqlalchemy.exc import OperationalError

from app.config import Settings
from app.control.accounts import Accounts
from app.db.database import Database
from app.db.embedded import EmbeddedDatabaseError
from app.store.catalog import ModelStore


@st.cache_resource(show_spinner=False, max_entries=8)
def _settings(herd_env: tuple[tuple[str, str], ...]) -> Settings:
    # Keyed by the HERD_* variables, so an environment changed in this process (tests run
    # many dashboards in one) gets its own Settings; an unchanged one is never parsed again.
    return Settings()


def settings() -> Settings:
    """The dashboard's settings, read from the environment `herd up` gave it, built once per
    environment rather than on every call (pages ask for them many times per run)."""
    herd_env = tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("HERD_")))
    return _settings(herd_env)


def database_key() -> str:
    """Which database this dashboard reads (URL or embedded data folder): the part of a
    cached query's key that keeps two databases' results apart."""
    current = settings()
    return f"{current.database_url or ''}|{current.pgdata_dir}"


@st.cache_resource(show_spinner=False)
def _database(url: str | None, pgdata: str) -> Database:
    # The arguments are the cache key: a changed HERD_DATABASE_URL gets its own engine.
    return Database.open(settings())


def database() -> Database:
    """The open database of this dashboard process."""
    current = settings()
    return _database(current.database_url, str(current.pgdata_dir))


# While the database is unavailable, a page checks this often whether it is back.
DATABASE_RETRY_S = 3.0


def database_reachable() -> bool:
    """Does the dashboard's database answer right now?"""
    try:
        with database().engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except (OperationalError, EmbeddedDatabaseError):
        return False
    return True


@st.fragment(run_every=DATABASE_RETRY_S)
def _rerun_when_database_is_back() -> None:
    if database_reachable():
        st.rerun(scope="app")


@contextmanager
def database_errors() -> Iterator[None]:
    """Show 'database unavailable' instead of a stack trace, stop the page run, and run the
    page again by itself once the database answers."""
    try:
        # Asked first because a cached read (app/ui/reads.py) may not reach the database at
        # all: an outage then still shows here, at once, not when the cache expires.
        with database().engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        yield
    except (OperationalError, EmbeddedDatabaseError) as exc:
        reason = getattr(exc, "orig", None) or exc
        st.error(
            f"Database unavailable: {reason}. "
            f"This page checks every {DATABASE_RETRY_S:g} s and recovers by itself."
        )
        _rerun_when_database_is_back()
        st.stop()


def accounts() -> Accounts:
    current = settings()
    return Accounts(
        database().engine,
        max_failures=current.login_max_failures,
        lockout_s=current.login_lockout_s,
    )


def model_store() -> ModelStore:
    return ModelStore(database().engine, settings().models_path)
