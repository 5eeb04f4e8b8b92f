"""What table classes are handed: an Engine (each call its own transaction) or a Connection
already in a transaction (the caller's transaction covers every call, as app/admin needs for
a change and its audit row)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

Bind = Engine | Connection


@contextmanager
def begin(bind: Bind) -> Iterator[Connection]:
    """A connection in a transaction: a new one for an Engine, the caller's for a Connection
    (committed or rolled back by whoever began it)."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.begin() as conn:
        yield conn


@contextmanager
def connect(bind: Bind) -> Iterator[Connection]:
    """A connection to read with: a new one for an Engine, the caller's for a Connection."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn
