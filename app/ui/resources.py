"""Process-wide resources for the dashboard, cached by Streamlit across reruns and sessions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st
from sqlalchemy.exc import OperationalError

from app.accounts import Accounts
from app.config import Settings
from app.db.database import Database
from app.db.embedded import EmbeddedDatabaseError
from app.store.catalog import ModelStore


def settings() -> Settings:
    """The dashboard's settings, read from the environment `herd up` gave it."""
    return Settings()


@st.cache_resource(show_spinner=False)
def _database(url: str | None, pgdata: str) -> Database:
    # The arguments are the cache key: a changed HERD_DATABASE_URL gets its own engine.
    return Database.open(settings())


def database() -> Database:
    """The open database of this dashboard process."""
    current = settings()
    return _database(current.database_url, str(current.pgdata_dir))


@contextmanager
def database_errors() -> Iterator[None]:
    """Show 'database unavailable' instead of a stack trace, and stop the page run."""
    try:
        yield
    except (OperationalError, EmbeddedDatabaseError) as exc:
        reason = getattr(exc, "orig", None) or exc
        st.error(f"Database unavailable: {reason}. This page retries when you reload it.")
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
