"""The request log's COPY path against real PostgreSQL: every row exactly once, also when a
batch holds a row the database already has or a value COPY cannot encode."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from app.db.database import Database
from app.gateway.request_log import RequestLog, RequestRecord, copy_entries, write_entries
from app.gateway.spool import Spool


def record(content: str = "hi", *, status: str = "ok") -> RequestRecord:
    return RequestRecord(
        id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        endpoint="chat.completions",
        alias="a\x00b",
        session_id="s",
        prompt_tokens=3,
        total_ms=1.5,
        status=status,
        cache_hit=True,
        prompt=[{"role": "user", "content": content}],
        response="answer\x00",
    )


def counts(database: Database) -> tuple[int, int, int]:
    with database.engine.connect() as conn:
        requests = conn.execute(text("SELECT count(*) FROM requests")).scalar_one()
        messages = conn.execute(text("SELECT count(*) FROM messages")).scalar_one()
        # The rollup trigger is per statement: one COPY must still count every row.
        hourly = conn.execute(
            text("SELECT coalesce(sum(requests), 0) FROM requests_hourly")
        ).scalar_one()
    return requests, messages, hourly


def test_copy_writes_every_field_and_the_rollups(database: Database) -> None:
    records = [record(f"n{i}") for i in range(5)]
    # Extra message fields pass through to the log: JSON allows integers orjson refuses.
    records[1].prompt = [{"role": "user", "content": "x", "n": 2**70}]
    copy_entries(database.engine, [r.entry() for r in records])
    assert counts(database) == (5, 5, 5)
    with database.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT r.alias, r.session_id, r.prompt_tokens, r.total_ms, r.cache_hit, "
                "r.created_at, m.prompt, m.response FROM requests r "
                "JOIN messages m ON m.request_id = r.id WHERE r.id = :id"
            ),
            {"id": records[0].id},
        ).one()
    assert row[:5] == ("a\ufffdb", "s", 3, 1.5, True)
    assert row[5] == records[0].created_at
    assert row[6] == [{"role": "user", "content": "n0"}]
    assert row[7] == "answer\ufffd"
    with database.engine.connect() as conn:
        big = conn.execute(
            text("SELECT prompt -> 0 ->> 'n' FROM messages WHERE request_id = :id"),
            {"id": records[1].id},
        ).scalar_one()
    assert big == str(2**70)


def test_a_batch_with_a_row_already_there_writes_the_rest_once(
    database: Database, tmp_path: Path
) -> None:
    log = RequestLog(database.engine, Spool(tmp_path / "spool"), flush_s=60, batch_rows=100)
    first, second = record(), record("NUL in JSON \x00")
    write_entries(database.engine, [first.entry()])
    # COPY refuses the batch (first is there): the ON CONFLICT path writes second alone.
    log._insert([first.entry(), second.entry()])
    assert counts(database) == (2, 2, 2)
    with database.engine.connect() as conn:
        prompt = conn.execute(
            text("SELECT prompt FROM messages WHERE request_id = :id"), {"id": second.id}
        ).scalar_one()
    assert prompt == [{"role": "user", "content": "NUL in JSON \ufffd"}]


def test_a_value_copy_cannot_encode_costs_only_its_own_row(
    database: Database, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    log = RequestLog(database.engine, spool, flush_s=60, batch_rows=100)

    async def run() -> None:
        log.add(record("fine"))
        log.add(record("lone surrogate \ud800"))
        log.add(record("fine too"))
        await log.flush()
        await log.close()

    asyncio.run(run())
    # The good rows are written; the one PostgreSQL cannot store is dropped with an error
    # (as the row-by-row path always did), but never spooled as if the database were down.
    assert counts(database) == (2, 2, 2)
    assert spool.rows == 0 and log.database_ok
