"""The `herd` command as a user runs it: a real process against a real database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, inspect

from app.store.demo import DEMO_FILE
from tests.conftest import run_herd


def test_models_add_demo_then_list_json(herd_env: dict[str, str]) -> None:
    added = run_herd("models", "add", "--demo", env=herd_env)
    assert added.returncode == 0, added.stderr
    assert DEMO_FILE in added.stdout

    listed = run_herd("models", "list", "--json", env=herd_env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == [DEMO_FILE]
    demo = rows[0]
    assert demo["status"] == "valid"
    assert demo["architecture"] == "llama"
    assert demo["file_type"] == "Q4_1"
    assert demo["block_count"] == 30
    assert demo["context_length"] == 8192
    assert demo["has_chat_template"] is True
    assert len(demo["sha256"]) == 64
    assert demo["estimate"]["ram_bytes"] > demo["size_bytes"]

    table = run_herd("models", "list", env=herd_env)
    assert DEMO_FILE in table.stdout and "valid" in table.stdout


def test_models_add_errors_are_clear(
    herd_env: dict[str, str], tmp_path: Path, tiny_gguf: Callable[..., Path]
) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("not a model")
    result = run_herd("models", "add", str(bogus), env=herd_env)
    assert result.returncode == 1
    assert "not a valid GGUF" in result.stderr
    assert "Traceback" not in result.stderr

    source = tiny_gguf()
    assert run_herd("models", "add", str(source), env=herd_env).returncode == 0
    clash = run_herd("models", "add", str(source), env=herd_env)
    assert clash.returncode == 1 and "already exists" in clash.stderr

    escape = run_herd("models", "add", str(source), "--name", "../../evil.gguf", env=herd_env)
    assert escape.returncode == 1 and "outside the model store" in escape.stderr


def test_models_scan_reports_invalid_files(herd_env: dict[str, str], models_dir: Path) -> None:
    (models_dir / "junk.gguf").write_bytes(b"\x00" * 64)
    result = run_herd("models", "scan", env=herd_env)
    assert result.returncode == 0, result.stderr
    assert "0 valid, 1 invalid" in result.stdout
    assert "junk.gguf: not a GGUF file" in result.stdout


def test_users_add(herd_env: dict[str, str]) -> None:
    made = run_herd("users", "add", "dana", "--role", "viewer", "--password-stdin",
                    env=herd_env,
                stdin="a long password\n")  # fmt: skip
    assert made.returncode == 0, made.stderr
    again = run_herd(
        "users", "add", "dana", "--password-stdin", env=herd_env, stdin="whatever123\n"
    )
    assert again.returncode == 1 and "already exists" in again.stderr
    generated = run_herd("users", "add", "erin", env=herd_env, stdin="")
    assert generated.returncode == 0 and "password:" in generated.stdout


def test_bad_database_url_is_refused(herd_env: dict[str, str]) -> None:
    result = run_herd("models", "list", env={**herd_env, "HERD_DATABASE_URL": "sqlite:///x.db"})
    assert result.returncode == 1
    assert "Herd needs PostgreSQL" in result.stderr


def test_unreachable_database_is_reported(herd_env: dict[str, str], tmp_path: Path) -> None:
    url = f"postgresql://nobody@/herd?host={tmp_path}"  # no server listens there
    result = run_herd("models", "list", env={**herd_env, "HERD_DATABASE_URL": url})
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_url_of_the_embedded_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HERD_DATABASE_URL"}
    env["HERD_HOME"] = str(tmp_path / "home")
    env["HERD_MODELS_DIR"] = str(tmp_path / "models")
    try:
        assert run_herd("db", "upgrade", env=env).returncode == 0
        result = run_herd("db", "url", env=env)
        assert result.returncode == 0, result.stderr
        url = result.stdout.strip()
        assert url.startswith("postgresql://")
        engine = create_engine(url)  # plain SQLAlchemy, as an analyst would
        try:
            tables = set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert {"models", "requests", "feedback", "messages"} <= tables
        if shutil.which("psql"):
            psql = subprocess.run(
                ["psql", url, "-tAc", "select count(*) from models"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert psql.returncode == 0, psql.stderr
            assert psql.stdout.strip() == "0"
    finally:
        stopped = run_herd("db", "stop", env=env)
    assert stopped.stdout.strip() == "stopped"
    assert not (tmp_path / "home" / "pgdata" / "postmaster.pid").exists()
