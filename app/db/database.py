"""An opened Herd database: its URL, an engine, and the embedded server handle if any."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from types import TracebackType

from sqlalchemy import Engine

from app.config import Settings
from app.db import migrate
from app.db.embedded import EmbeddedPostgres, serves
from app.db.engine import make_engine, sqlalchemy_url


class Database:
    """The database a herd process works on; close() releases the embedded server handle.

    pgdata: the embedded server's folder, for a URL that may point at it (`herd up` hands its
    children the embedded server's URL, so they attach and start nothing)."""

    def __init__(
        self, url: str, embedded: EmbeddedPostgres | None = None, pgdata: Path | None = None
    ) -> None:
        self.url = url
        self.embedded = embedded
        self.pgdata = pgdata
        self.engine: Engine = make_engine(url)

    @classmethod
    def open(cls, settings: Settings) -> Database:
        """Use HERD_DATABASE_URL when set; otherwise attach to (or start) the embedded server."""
        if settings.database_url:
            sqlalchemy_url(settings.database_url)  # fail early on a URL that is not PostgreSQL
            return cls(settings.database_url, pgdata=settings.pgdata_dir)
        embedded = EmbeddedPostgres(settings.pgdata_dir)
        url = embedded.start()
        try:
            return cls(url, embedded)
        except Exception:
            embedded.release()
            raise

    @classmethod
    def open_current(cls, settings: Settings) -> Database:
        """open(), then bring the schema up to date: how every herd command starts."""
        database = cls.open(settings)
        try:
            migrate.upgrade(database.url)
        except BaseException:
            database.close()
            raise
        return database

    @cached_property
    def is_embedded(self) -> bool:
        """Is this Herd's embedded PostgreSQL, whether this process holds a handle on it or
        was given its URL?"""
        if self.embedded is not None:
            return True
        return self.pgdata is not None and serves(self.url, self.pgdata)

    def close(self) -> None:
        self.engine.dispose()
        if self.embedded is not None:
            self.embedded.release()
            self.embedded = None

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
