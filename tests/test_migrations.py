"""The Alembic chain: up, down, up again, and no drift from the ORM tables."""

from __future__ import annotations

from sqlalchemy import inspect

from app.db import migrate
from app.db.engine import make_engine
from app.db.tables import Base

EXPECTED_TABLES = {
    "models",
    "deployments",
    "workers",
    "requests",
    "messages",
    "feedback",
    "operators",
    "api_keys",
}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_without_drift(empty_db_url: str) -> None:
    assert _tables(empty_db_url) == set()

    migrate.upgrade(empty_db_url)
    assert _tables(empty_db_url) >= EXPECTED_TABLES
    assert _tables(empty_db_url) == set(Base.metadata.tables)
    assert migrate.schema_drift(empty_db_url) == []

    migrate.downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == set()

    migrate.upgrade(empty_db_url)
    assert migrate.schema_drift(empty_db_url) == []
    engine = make_engine(empty_db_url)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_drift_is_detected(db_url: str) -> None:
    # The drift check must be able to fail: drop an index the ORM declares.
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_requests_created_at")
    finally:
        engine.dispose()
    diffs = migrate.schema_drift(db_url)
    assert any("ix_requests_created_at" in str(d) for d in diffs)


def test_one_linear_chain() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config(""))
    assert len(script.get_heads()) == 1
    assert len(script.get_bases()) == 1
