"""`herd demo-traffic` and `herd export` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import text

from app.db.engine import make_engine
from tests.conftest import run_herd


def test_demo_traffic_export_and_delete(
    herd_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    made = run_herd(
        "demo-traffic", "--requests", "5000", "--days", "3", "--seed", "0.1", env=herd_env
    )
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
        none = run_herd("export", "sft", "-o", str(out), env=herd_env)
        assert none.returncode == 0, none.stderr
        assert "wrote 0 records" in none.stdout  # synthetic rows need --include-synthetic
        done = run_herd(
            "export", "preference", "-o", str(out), "--include-synthetic",
            "--model", "synthetic/assistant-v2.Q4_K_M.gguf", "--since", "2000-01-01",
            env=herd_env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert lines and all(set(x) == {"prompt", "chosen", "rejected", "source"} for x in lines)
        assert (tmp_path / "out" / "sft.card.md").exists()
        missing = run_herd("export", "sft", "-o", str(out), "--model", "nope.gguf", env=herd_env)
        assert missing.returncode == 1 and "no model named nope.gguf" in missing.stderr

        gone = run_herd("demo-traffic", "--delete", env=herd_env)
        assert gone.returncode == 0, gone.stderr
        assert "deleted 5000 synthetic requests" in gone.stdout
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM requests")).scalar_one() == 0
    finally:
        engine.dispose()
