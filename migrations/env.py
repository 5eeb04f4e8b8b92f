"""Alembic environment: the URL comes from Herd's settings, never from alembic.ini."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

from app.config import Settings
from app.db.database import Database
from app.db.engine import make_engine
from app.db.tables import Base

config = context.config
# Every herd process upgrades the schema when it starts, so several (gateway replicas, the
# dashboard, Kubernetes' migration Job) may do so at once on a new database: a transaction-level
# advisory lock makes them take turns, and each later one finds the schema already at head.
MIGRATION_LOCK_KEY = 0x6865726400  # "herd\0"
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def run_migrations_online() -> None:
    url = config.attributes.get("url")
    database = None
    if not url:
        # Run as plain `alembic ...`: resolve the database the way every herd command does.
        database = Database.open(Settings())
        url = database.url
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                compare_type=True,
            )
            with context.begin_transaction():
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                context.run_migrations()
    finally:
        engine.dispose()
        if database is not None:
            database.close()


if context.is_offline_mode():
    raise SystemExit("Herd's migrations run online only: they need the database to talk to.")
run_migrations_online()
