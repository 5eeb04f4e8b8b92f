"""Batch lines reach the fleet once: a runner killed -9 with lines in flight, five times at
random lines, leaves no line sent twice (request rows, the worker's own count and the
lines' attempts all equal the lines); a line sent again is answered from the call in flight
or done at the gateway, without a second call; a call lost with its runner that reached the
fleet is counted in `attempts` and shown as a resend.

On the stub worker (tests/stub_worker.py): these tests are about the runner and the
gateway, not the engine."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.batches.files import FileStore
from app.batches.progress import describe
from app.batches.runner import BatchRunner, files_root
from app.batches.service import create_batch
from app.batches.store import BatchStore
from app.config import Settings
from app.db.database import Database
from app.jobs.kinds import JobKind
from app.jobs.store import JobStore
from tests.batch_harness import batch_gateway, chat_line, openai_client, wait_batch, write_jsonl
from tests.gateway_harness import (
    GatewayThread,
    Stubs,
    StubWorker,
    add_deployment,
    add_model,
    gateway_settings,
    wait_for,
)
from tests.test_batch_faults import done_lines, exactly_once, runner_job

ALIAS = "once"
LINES = 48
KILLS = 5


@pytest.fixture(autouse=True)
def _four_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    # The runner processes take their settings from the environment they are started in.
    monkeypatch.setenv("HERD_BATCH_CONCURRENCY", "4")


@pytest.fixture
def stub(db_url: str, database: Database) -> Iterator[StubWorker]:
    """A stub worker behind ALIAS answering 4 tokens 40 ms apart: a line takes ~160 ms."""
    stubs = Stubs(db_url)
    model_id = add_model(database.engine, f"{ALIAS}.gguf")
    deployment_id = add_deployment(database.engine, ALIAS, model_id)
    try:
        yield stubs.start(
            ALIAS, "stub", deployment_id=deployment_id, model_id=model_id, tokens=4,
            token_delay_ms=40, slots=4,
        )  # fmt: skip
    finally:
        stubs.stop_all()


def request_rows(database: Database, batch_id: str) -> list[tuple[int | None, int]]:
    """(batch line, calls logged) of the batch's request rows, by line."""
    with database.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT batch_line, count(*) FROM requests WHERE batch_id = :b "
                "GROUP BY batch_line ORDER BY batch_line"
            ),
            {"b": batch_id},
        ).all()
    return [(r[0], int(r[1])) for r in rows]


def attempts(database: Database, batch_id: str) -> dict[int, int]:
    with database.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT line, attempts FROM batch_requests WHERE batch_id = :b"), {"b": batch_id}
        ).all()
    return {int(r.line): int(r.attempts) for r in rows}


def settled_rows(database: Database, batch_id: str, n: int) -> list[tuple[int | None, int]]:
    """The request rows once the gateway's log has written n of them (and a little longer,
    for any beyond n to show up)."""
    wait_for(lambda: sum(c for _, c in request_rows(database, batch_id)) >= n, timeout_s=10)
    threading.Event().wait(0.5)  # several log flushes
    return request_rows(database, batch_id)


def _done(database: Database, batch_id: str, n: int) -> Callable[[], bool]:
    return lambda: done_lines(database, batch_id) >= n


def _runner_other_than(database: Database, batch_id: str, job: int) -> Callable[[], bool]:
    return lambda: runner_job(database, batch_id)[0] != job


def test_runner_killed_five_times_no_line_reaches_the_fleet_twice(
    tmp_path: Path, db_url: str, database: Database, stub: StubWorker
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    ids = [f"req-{i}" for i in range(LINES)]
    lines: list[dict[str, Any] | str] = [
        chat_line(cid, f"Write about {cid}", model=ALIAS, max_tokens=4) for cid in ids
    ]
    with batch_gateway(tmp_path, db_url) as gateway:
        gateway.wait_workers(1)
        client = openai_client(gateway.v1)
        source = write_jsonl(tmp_path / "in.jsonl", lines)
        uploaded = client.files.create(file=source.open("rb"), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        killed_at = []
        for _ in range(KILLS):
            wait_for(lambda: runner_job(database, batch.id)[1] is not None, timeout_s=60)
            job, pid = runner_job(database, batch.id)
            assert pid is not None
            at = done_lines(database, batch.id) + rng.randint(1, 5)
            wait_for(_done(database, batch.id, at), timeout_s=60, step_s=0.01)
            os.kill(pid, signal.SIGKILL)  # with lines in flight: 4 are, all the time
            killed_at.append(done_lines(database, batch.id))
            wait_for(_runner_other_than(database, batch.id, job), timeout_s=60)
        print(f"runners killed with {killed_at} lines done")
        assert killed_at[-1] < LINES, "the batch ended before the last kill"
        final = wait_batch(client, batch.id, timeout_s=120)
        assert final.status == "completed"
        output, errors = exactly_once(client, final, ids)
        assert len(output) == LINES and not errors
        # Each line reached the fleet once: one request row per line, the worker served as
        # many calls as there are lines, and no line counts more than one attempt.
        assert settled_rows(database, batch.id, LINES) == [(n, 1) for n in range(1, LINES + 1)]
        assert stub.served() == LINES
        assert set(attempts(database, batch.id).values()) == {1}
        view = BatchStore(database.engine).get(batch.id)
        assert view.resends == 0 and "resend" not in describe(view)


@dataclass(frozen=True)
class HeldBatch:
    """A batch no runner of the gateway's takes (its runner job is a queued job that never
    starts): the test sends its lines, or runs a runner in this process."""

    id: str
    token: str


def held_batch(settings: Settings, database: Database, n: int) -> HeldBatch:
    bodies = [
        {"messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 4}
        for i in range(1, n + 1)
    ]
    batch_id = create_batch(settings, database.engine, alias=ALIAS, bodies=bodies, start=False)
    holder = JobStore(database.engine).create(JobKind.BATCH, {"batch_id": batch_id}, "test")
    assert BatchStore(database.engine).hand_to(batch_id, None, holder)
    return HeldBatch(batch_id, BatchStore(database.engine).runner_info(batch_id).runner_token)


@contextmanager
def held_batch_gateway(
    tmp_path: Path, db_url: str, database: Database, n: int
) -> Iterator[tuple[HeldBatch, Settings, GatewayThread]]:
    """A held batch of n lines, then a gateway: (the batch, settings that reach the gateway,
    the gateway). The batch is held before the gateway's watch looks for runnerless ones."""
    settings = gateway_settings(tmp_path, db_url, batch_watch_s=0.5)
    batch = held_batch(settings, database, n)
    thread = GatewayThread(settings, db_url)
    try:
        thread.wait_workers(1)
        yield batch, settings.model_copy(update={"gateway_url": thread.url}), thread
    finally:
        thread.stop()


def test_a_line_sent_again_is_answered_by_its_first_call(
    tmp_path: Path, db_url: str, database: Database, stub: StubWorker
) -> None:
    with held_batch_gateway(tmp_path, db_url, database, 2) as (batch, _, thread):

        def send(line: str) -> httpx.Response:
            headers = {"X-Herd-Batch": batch.id, "X-Herd-Batch-Token": batch.token,
                       "X-Herd-Batch-Line": line}  # fmt: skip
            body = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4}  # fmt: skip
            return httpx.post(f"{thread.v1}/chat/completions", json=body, headers=headers,
                              timeout=30)  # fmt: skip

        async def twice() -> list[httpx.Response]:
            # The second call comes while the first is in flight (it takes ~160 ms).
            first = asyncio.create_task(asyncio.to_thread(send, "1"))
            await asyncio.sleep(0.05)
            return [await first, await asyncio.to_thread(send, "1")]

        first, joined = asyncio.run(twice())
        again = send("1")
        assert first.status_code == joined.status_code == again.status_code == 200
        assert first.json() == joined.json() == again.json()
        assert "x-herd-batch-replayed" not in first.headers
        assert joined.headers["x-herd-batch-replayed"] == again.headers["x-herd-batch-replayed"]
        # One call reached the worker and the request log; the gateway committed the answer
        # to the line though no runner did.
        assert stub.served() == 1
        assert settled_rows(database, batch.id, 1) == [(1, 1)]
        line = BatchStore(database.engine).pending(batch.id, set(), 10)
        assert [p.line for p in line] == [2]
        with database.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT state, attempts, request_id, response FROM batch_requests "
                    "WHERE batch_id = :b AND line = 1"
                ),
                {"b": batch.id},
            ).one()
        assert (row.state, row.attempts) == ("succeeded", 1)
        assert row.request_id == first.json()["id"] and row.response == first.json()
        # A line number that is none: 400 naming the header.
        bad = send("0")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Herd-Batch-Line"


def test_a_call_lost_with_its_runner_is_counted_as_a_resend(
    tmp_path: Path, db_url: str, database: Database, stub: StubWorker
) -> None:
    with held_batch_gateway(tmp_path, db_url, database, 3) as (batch, settings, _):
        store = BatchStore(database.engine)
        # A runner sent lines 1 and 2 and died before their answers came; the request log
        # holds line 1's call (it reached the fleet; its gateway is gone with its answer),
        # not line 2's (it reached no gateway).
        store.mark_sent(batch.id, [1, 2])
        with database.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO requests (id, alias, status, http_status, batch_id, "
                    "batch_line) VALUES (:id, :a, 'ok', 200, :b, 1)"
                ),
                {"id": uuid.uuid4(), "a": ALIAS, "b": batch.id},
            )
        notes: list[str] = []
        files = FileStore(database.engine, files_root(settings))
        runner = BatchRunner(settings, store, files, batch.id, lambda d, t: None, notes.append)
        result = asyncio.run(runner.run())
        assert result["status"] == "completed" and result["completed"] == 3
        assert attempts(database, batch.id) == {1: 2, 2: 1, 3: 1}
        assert stub.served() == 3
        assert settled_rows(database, batch.id, 4) == [(1, 2), (2, 1), (3, 1)]
        view = store.get(batch.id)
        assert view.resends == 1 and "3 completed, 0 failed, 1 resend)" in describe(view)
        assert any("line 1: sent again" in note for note in notes), notes
