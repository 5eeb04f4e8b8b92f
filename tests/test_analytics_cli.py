"""`herd demo-traffic` and `herd export` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from app.db.engine import make_engine


def herd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def env(db_url: str, models_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HERD_DATABASE_URL": db_url,
        "HERD_MODELS_DIR": str(models_dir),
        "HERD_HOME": str(tmp_path / "home"),
    }


def test_demo_traffic_export_and_delete(env: dict[str, str], db_url: str, tmp_path: Path) -> None:
    made = herd("demo-traffic", "--requests", "5000", "--days", "3", "--seed", "0.1", env=env)
    assert made.returncode == 0, made.stderr
    assert "inserted 5000 synthetic requests" in made.stdout
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert (
                conn.execute(text("SELECT count(*) FROM requests WHERE synthetic")).scalar_one()
                == 5000
            )

        out = tmp_path / "out" / "sft.jsonl"
        none = herd("export", "sft", "-o", str(out), env=env)
        assert none.returncode == 0, none.stderr
        assert "wrote 0 records" in none.stdout  # synthetic rows need --include-synthetic
        done = herd(
            "export", "preference", "-o", str(out), "--include-synthetic",
            "--model", "synthetic/assistant-v2.Q4_K_M.gguf", "--since", "2000-01-01",
            env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert lines and all(set(x) == {"prompt", "chosen", "rejected", "source"} for x in lines)
        assert (tmp_path / "out" / "sft.card.md").exists()
        missing = herd("export", "sft", "-o", str(out), "--model", "nope.gguf", env=env)
        assert missing.returncode == 1 and "no model named nope.gguf" in missing.stderr

        gone = herd("demo-traffic", "--delete", env=env)
        assert gone.returncode == 0, gone.stderr
        assert "deleted 5000 synthetic requests" in gone.stdout
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM requests")).scalar_one() == 0
    finally:
        engine.dispose()
