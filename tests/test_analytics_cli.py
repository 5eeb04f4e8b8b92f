"""`herd demo-traffic` and `herd export` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from app.analytics.demo_traffic import QUESTIONS, generate_demo_traffic
from app.db.database import Database
from app.db.engine import make_engine
from tests.conftest import run_herd

# A session id whose hashtext() is 8 above int4's minimum: the question picked for its rated
# answers adds the prompt tokens (30 or more) to the hash's absolute value. In int4 that
# overflowed, which stopped the 10M-row benchmark run partway.
EDGE_TOKEN = "0000beef"
EDGE_SESSION = 91_807_944


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


def test_demo_traffic_survives_session_hashes_at_the_int4_limit(database: Database) -> None:
    session_id = f"demo-{EDGE_TOKEN}-{EDGE_SESSION}"
    with database.engine.connect() as conn:
        hashed = conn.execute(text("SELECT hashtext(:s)"), {"s": session_id}).scalar_one()
    assert hashed < -(2**31) + 30  # else this test no longer reaches the edge

    result = generate_demo_traffic(
        database.engine, 40, days=1, seed=0.3, feedback_rate=1.0,
        run_token=EDGE_TOKEN, first_session=EDGE_SESSION,
    )  # fmt: skip
    assert result.requests == 40
    with database.engine.connect() as conn:
        picked = conn.execute(
            text(
                """
                SELECT r.prompt_tokens, m.prompt -> 0 ->> 'content'
                FROM requests r JOIN messages m ON m.request_id = r.id
                WHERE r.session_id = :s
                """
            ),
            {"s": session_id},
        ).all()
    assert picked  # the edge session was rated (every answered request is, at rate 1.0)
    for prompt_tokens, question in picked:
        assert question == QUESTIONS[(abs(hashed) + prompt_tokens) % len(QUESTIONS)]


def test_demo_traffic_rejects_bad_options(database: Database) -> None:
    with pytest.raises(ValueError, match="run_token"):
        generate_demo_traffic(database.engine, 10, run_token="a-b")
    with pytest.raises(ValueError, match="feedback_rate"):
        generate_demo_traffic(database.engine, 10, feedback_rate=1.5)
