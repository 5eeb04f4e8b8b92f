"""SQLAlchemy engines for Herd's PostgreSQL, built by whoever runs, never at import."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class DatabaseUrlError(ValueError):
    """HERD_DATABASE_URL is not a PostgreSQL URL Herd can use."""


def sqlalchemy_url(url: str) -> str:
    """The URL with the psycopg (v3) driver named, as SQLAlchemy needs it."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"not a database URL: {url!r}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseUrlError(
            f"Herd needs PostgreSQL; got a {parsed.get_backend_name()!r} URL. "
            "Set HERD_DATABASE_URL to a postgresql:// URL, or unset it to use the embedded server."
        )
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


# libpq waits forever for a server that does not answer a connect (a host gone from the
# network); a process must see that as an error it can retry or give up on.
CONNECT_TIMEOUT_S = 10


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for url; pre-ping so a restarted server does not surface as a stale socket."""
    full = sqlalchemy_url(url)
    # A connect_timeout in the URL is the operator's choice and wins.
    connect_args = (
        {} if "connect_timeout" in make_url(full).query else {"connect_timeout": CONNECT_TIMEOUT_S}
    )
    return create_engine(full, pool_pre_ping=True, pool_size=pool_size, connect_args=connect_args)
