"""A PostgreSQL without pgvector (Debian's server, as HERD_DATABASE_URL might name): the
schema still migrates, and the semantic cache is off and says why, where operators look."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from streamlit.testing.v1 import AppTest

from app.control.accounts import Role
from app.control.aliases import AliasSettingError, AliasSettings, AliasStore
from app.db import migrate
from app.db.engine import sqlalchemy_url
from app.db.pgvector import pgvector_problem
from app.gateway.vector_store import VectorStore
from tests.conftest import REPO_ROOT, log_in_as
from tests.test_multihost import PG_USER, open_to, pg_bin, run

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or not list(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    or bool(list(Path("/usr/share/postgresql").glob("*/extension/vector.control"))),
    reason="needs root and Debian's PostgreSQL without pgvector (as CI has)",
)


@pytest.fixture
def plain_postgres(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    bin_dir = pg_bin()
    pgdir = tmp_path / "plainpg"
    open_to(pgdir, PG_USER)
    run("runuser", "-u", PG_USER, "--", str(bin_dir / "initdb"), "-D", str(pgdir / "data"),
        "-U", "herd", "-A", "trust", "--no-sync")  # fmt: skip
    server = subprocess.Popen(
        ["runuser", "-u", PG_USER, "--", str(bin_dir / "postgres"), "-D", str(pgdir / "data"),
         "-k", str(pgdir), "-c", "listen_addresses=", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"postgresql://herd@/postgres?host={pgdir}"
    engine = create_engine(sqlalchemy_url(url))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        migrate.upgrade(url)
        yield url, engine
    finally:
        engine.dispose()
        server.terminate()
        server.wait(timeout=30)


def test_without_pgvector_the_semantic_cache_says_why(
    plain_postgres: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, engine = plain_postgres
    problem = pgvector_problem(engine)
    assert problem is not None and "no pgvector extension" in problem
    assert VectorStore(engine).status() == problem  # what the gateway logs and /health shows

    store = AliasStore(engine)
    with pytest.raises(AliasSettingError, match="no pgvector extension"):
        store.put("chat", AliasSettings(True, 60, semantic_cache_alias="embed"))
    assert store.all() == {}  # nothing half-saved
    store.put("chat", AliasSettings(True, 60))  # everything else still saves

    monkeypatch.setenv("HERD_DATABASE_URL", url)
    monkeypatch.setenv("HERD_HOME", str(tmp_path / "home"))
    app = AppTest.from_file(str(REPO_ROOT / "pages" / "routing.py"), default_timeout=30)
    log_in_as(app, "alice", Role.OPERATOR)
    app.run()
    assert not app.exception, app.exception
    assert any("semantic cache is off" in w.value for w in app.warning)
    assert app.selectbox(key="alias_semantic_chat").disabled
