"""Text retention and redaction: old prompt/response text goes, metrics and ratings stay;
emails, phone numbers and card numbers are replaced before text is stored."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import Engine, text

from app.db.database import Database
from app.gateway.retention import delete_expired_text
from tests.conftest import run_herd
from tests.gateway_harness import served_alias, wait_for


def add_request(engine: Engine, age_days: float, *, rating: int | None = None) -> uuid.UUID:
    """A request with its text (and optionally a rating), created age_days ago."""
    request_id = uuid.uuid4()
    created = datetime.now(UTC) - timedelta(days=age_days)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO requests (id, created_at, alias, status, total_ms, "
                "completion_tokens) VALUES (:id, :t, 'm', 'ok', 12.5, 7)"
            ),
            {"id": request_id, "t": created},
        )
        conn.execute(
            text(
                "INSERT INTO messages (request_id, prompt, response, created_at) "
                'VALUES (:id, \'[{"role": "user", "content": "q"}]\', \'a\', :t)'
            ),
            {"id": request_id, "t": created},
        )
        if rating is not None:
            conn.execute(
                text("INSERT INTO feedback (request_id, rating, comment) VALUES (:id, :r, 'c')"),
                {"id": request_id, "r": rating},
            )
    return request_id


def counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return (
            int(conn.execute(text("SELECT count(*) FROM requests")).scalar_one()),
            int(conn.execute(text("SELECT count(*) FROM messages")).scalar_one()),
            int(conn.execute(text("SELECT count(*) FROM feedback")).scalar_one()),
        )


def test_retention_deletes_old_text_and_keeps_metrics_and_ratings(database: Database) -> None:
    engine = database.engine
    old = [add_request(engine, 40, rating=-1), add_request(engine, 31)]
    recent = add_request(engine, 29, rating=1)
    assert delete_expired_text(engine, 30) == 2
    assert counts(engine) == (3, 1, 2)
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT request_id FROM messages")).scalar_one()
        metrics = conn.execute(
            text("SELECT total_ms, completion_tokens FROM requests WHERE id = :id"),
            {"id": old[0]},
        ).one()
        rating = conn.execute(
            text("SELECT rating FROM feedback WHERE request_id = :id"), {"id": old[0]}
        ).scalar_one()
    assert kept == recent
    assert tuple(metrics) == (12.5, 7)
    assert rating == -1
    assert delete_expired_text(engine, 30) == 0  # nothing left to do


def test_retention_cli(db_url: str, database: Database, tmp_path: Path) -> None:
    add_request(database.engine, 10)
    add_request(database.engine, 1)
    env = {**os.environ, "HERD_DATABASE_URL": db_url, "HERD_HOME": str(tmp_path / "home")}
    env.pop("HERD_TEXT_RETENTION_DAYS", None)
    refused = run_herd("retention", "run", env=env)
    assert refused.returncode == 2
    assert "HERD_TEXT_RETENTION_DAYS" in refused.stderr
    done = run_herd("retention", "run", env={**env, "HERD_TEXT_RETENTION_DAYS": "5"})
    assert done.returncode == 0, done.stderr
    assert "deleted the text of 1 requests" in done.stdout
    assert counts(database.engine) == (2, 1, 0)
    again = run_herd("retention", "run", "--days", "0.5", env=env)
    assert again.returncode == 0, again.stderr
    assert counts(database.engine) == (2, 0, 0)


def test_gateway_applies_retention_periodically(db_url: str, tmp_path: Path) -> None:
    with served_alias(
        db_url, tmp_path, "m", text_retention_days=7, retention_interval_s=0.2
    ) as target:
        engine = target.database.engine
        add_request(engine, 8)
        # Added after the gateway started: only the periodic run can delete it.
        wait_for(lambda: counts(engine)[1] == 0, timeout_s=15)
        fresh = add_request(engine, 6)
        answer = httpx.post(
            f"{target.url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert answer.status_code == 200
        wait_for(lambda: counts(engine)[1] == 2)
        with engine.connect() as conn:
            ids = set(conn.execute(text("SELECT request_id FROM messages")).scalars())
        assert fresh in ids


PERSONAL = (
    "mail me at jane.doe@example.com or call +1 (415) 555-0132, "
    "card 4111 1111 1111 1111, version 1.2.3 on 2024-05-01"
)


def stored_prompt(db_url: str, tmp_path: Path, redact: bool) -> tuple[str, str]:
    alias = "redacted" if redact else "plain"
    with served_alias(db_url, tmp_path / alias, alias, redact_text=redact) as target:
        chat = httpx.post(
            f"{target.url}/v1/chat/completions",
            json={"model": alias, "messages": [{"role": "user", "content": PERSONAL}]},
            timeout=30,
        )
        text_call = httpx.post(
            f"{target.url}/v1/completions", json={"model": alias, "prompt": PERSONAL}, timeout=30
        )
        assert chat.status_code == 200 and text_call.status_code == 200
        engine = target.database.engine
        wait_for(lambda: counts(engine)[1] == 2)
        with engine.connect() as conn:
            chat_prompt = conn.execute(
                text("SELECT prompt->0->>'content' FROM messages WHERE request_id = :id"),
                {"id": chat.json()["id"]},
            ).scalar_one()
            text_prompt = conn.execute(
                text("SELECT prompt->>'prompt' FROM messages WHERE request_id = :id"),
                {"id": text_call.json()["id"]},
            ).scalar_one()
            conn.execute(text("DELETE FROM requests"))
            conn.commit()
    return chat_prompt, text_prompt


def test_redaction_before_text_is_stored(db_url: str, tmp_path: Path) -> None:
    assert stored_prompt(db_url, tmp_path, redact=False) == (PERSONAL, PERSONAL)
    for prompt in stored_prompt(db_url, tmp_path, redact=True):
        assert "jane.doe" not in prompt and "4111" not in prompt and "555" not in prompt
        assert "[EMAIL]" in prompt and "[CARD]" in prompt and "[PHONE]" in prompt
        assert "version 1.2.3 on 2024-05-01" in prompt  # not personal: kept
