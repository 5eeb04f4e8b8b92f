"""Batches under faults, on real parts: cancel mid-run; kill -9 of the runner, of a worker
and of the gateway mid-run; PostgreSQL stopped 30 s mid-run. Each ends with every
custom_id exactly once over the output and error files, and the counts exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from sqlalchemy import text

from app.db.database import Database
from tests.batch_harness import (
    batch_gateway,
    chat_line,
    openai_client,
    parse_jsonl,
    start_demo_worker,
    wait_batch,
    write_jsonl,
)
from tests.conftest import free_port, stop_process
from tests.gateway_harness import embedded_postgres, wait_for
from tests.worker_process import WorkerLauncher

REPO = Path(__file__).resolve().parents[1]
OUTAGE_S = 30
GIVE_UP_S = 10


@pytest.fixture(autouse=True)
def _two_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    # The runner processes take their settings from the environment they are started in.
    monkeypatch.setenv("HERD_BATCH_CONCURRENCY", "2")


def submit(
    client: openai.OpenAI, tmp_path: Path, n: int, max_tokens: int = 4
) -> tuple[Any, list[str]]:
    ids = [f"req-{i}" for i in range(n)]
    lines = [chat_line(cid, f"Write about {cid}", max_tokens=max_tokens) for cid in ids]
    source = write_jsonl(tmp_path / f"in-{n}.jsonl", lines)
    uploaded = client.files.create(file=source.open("rb"), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch, ids


def done_lines(database: Database, batch_id: str) -> int:
    with database.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM batch_requests WHERE batch_id = :b AND state <> 'pending'"
                ),
                {"b": batch_id},
            ).scalar_one()
        )


def runner_job(database: Database, batch_id: str) -> tuple[int, int | None]:
    with database.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT j.id, j.pid FROM batches b JOIN jobs j ON j.id = b.job_id WHERE b.id = :b"
            ),
            {"b": batch_id},
        ).one()
    return int(row.id), row.pid


def runner_log(database: Database, batch_id: str) -> str:
    with database.engine.connect() as conn:
        return str(
            conn.execute(
                text(
                    "SELECT j.log_tail FROM batches b JOIN jobs j ON j.id = b.job_id "
                    "WHERE b.id = :b"
                ),
                {"b": batch_id},
            ).scalar_one()
        )


def batch_rows(database: Database, batch_id: str) -> int:
    """The batch's request rows (its calls the gateway logged)."""
    with database.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM requests WHERE batch_id = :b"), {"b": batch_id}
            ).scalar_one()
        )


def exactly_once(client: openai.OpenAI, batch: Any, ids: list[str]) -> tuple[list[Any], list[Any]]:
    """The output and error lines; asserts every custom_id is in exactly one of them once."""
    output = (
        parse_jsonl(client.files.content(batch.output_file_id).text) if batch.output_file_id else []
    )
    errors = (
        parse_jsonl(client.files.content(batch.error_file_id).text) if batch.error_file_id else []
    )
    assert Counter(r["custom_id"] for r in output + errors) == Counter(ids)
    counts = batch.request_counts
    assert counts.total == len(ids)
    assert counts.completed == len(output)
    assert all(r["response"]["status_code"] == 200 for r in output)
    return output, errors


def test_cancel_mid_run_finishes_in_flight_and_writes_both_files(
    tmp_path: Path,
    db_url: str,
    database: Database,
    models_dir: Path,
    worker_launcher: WorkerLauncher,
) -> None:
    start_demo_worker(worker_launcher, database, models_dir)
    with batch_gateway(tmp_path, db_url) as gateway:
        gateway.wait_workers(1)
        client = openai_client(gateway.v1)
        batch, ids = submit(client, tmp_path, 16, max_tokens=8)
        wait_for(lambda: done_lines(database, batch.id) >= 2, timeout_s=180, step_s=0.2)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        final = wait_batch(client, batch.id, timeout_s=120)
        assert final.status == "cancelled" and final.cancelled_at
        output, errors = exactly_once(client, final, ids)
        assert 2 <= len(output) < 16
        not_sent = [e for e in errors if e["error"] and e["error"]["code"] == "batch_cancelled"]
        assert len(not_sent) == 16 - len(output) - final.request_counts.failed
        assert not_sent and all(e["response"] is None for e in not_sent)
        # Cancelling again answers with the batch as it is.
        assert client.batches.cancel(batch.id).status == "cancelled"


def test_runner_killed_resumes_where_it_was(
    tmp_path: Path,
    db_url: str,
    database: Database,
    models_dir: Path,
    worker_launcher: WorkerLauncher,
) -> None:
    start_demo_worker(worker_launcher, database, models_dir)
    with batch_gateway(tmp_path, db_url) as gateway:
        gateway.wait_workers(1)
        client = openai_client(gateway.v1)
        batch, ids = submit(client, tmp_path, 10)
        wait_for(lambda: done_lines(database, batch.id) >= 2, timeout_s=180, step_s=0.2)
        first_job, pid = runner_job(database, batch.id)
        assert pid is not None
        before = done_lines(database, batch.id)
        os.kill(pid, signal.SIGKILL)
        # The gateway's watch finds the runner dead and starts another, which goes on.
        wait_for(lambda: runner_job(database, batch.id)[0] != first_job, timeout_s=60)
        final = wait_batch(client, batch.id, timeout_s=240)
        assert final.status == "completed"
        output, errors = exactly_once(client, final, ids)
        assert len(output) == 10 and not errors
        with database.engine.connect() as conn:
            old = conn.execute(
                text("SELECT state FROM jobs WHERE id = :j"), {"j": first_job}
            ).scalar()
            # No line was sent again by the new runner: those answered before the kill are
            # committed, and those in flight were answered and committed by the gateway, or
            # joined there (one request row per line).
            resent = conn.execute(
                text("SELECT count(*) FROM batch_requests WHERE batch_id = :b AND attempts > 1"),
                {"b": batch.id},
            ).scalar_one()
        assert old == "failed" and before >= 2 and resent == 0
        wait_for(lambda: batch_rows(database, batch.id) >= 10, timeout_s=10)
        assert batch_rows(database, batch.id) == 10


def test_worker_killed_mid_run_lines_go_to_the_other(
    tmp_path: Path,
    db_url: str,
    database: Database,
    models_dir: Path,
    worker_launcher: WorkerLauncher,
) -> None:
    first, args = start_demo_worker(worker_launcher, database, models_dir)
    second = worker_launcher.start(*args)
    second.wait_ready(timeout_s=180)
    with batch_gateway(tmp_path, db_url) as gateway:
        gateway.wait_workers(2)
        client = openai_client(gateway.v1)
        batch, ids = submit(client, tmp_path, 12, max_tokens=6)
        wait_for(lambda: done_lines(database, batch.id) >= 2, timeout_s=180, step_s=0.2)
        first.process.send_signal(signal.SIGKILL)
        final = wait_batch(client, batch.id, timeout_s=300)
        assert final.status == "completed"
        output, errors = exactly_once(client, final, ids)
        assert len(output) == 12 and not errors


@contextmanager
def gateway_process(db_url: str, home: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "HERD_DATABASE_URL": db_url,
        "HERD_HOME": str(home),
        "HERD_GATEWAY_REFRESH_S": "0.2",
        "HERD_BATCH_WATCH_S": "0.5",
        "HERD_JOB_HEARTBEAT_S": "0.2",
        "HERD_JOB_STALE_S": "5",
        "HERD_GATEWAY_COLD_START_S": "0",
    }
    with (home / "gateway.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "gateway", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for(lambda: _healthy(port), timeout_s=60, step_s=0.2)
        yield process
    finally:
        if process.poll() is None:
            stop_process(process)


def _healthy(port: int) -> bool:
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
        return int(health.get("live_workers", 0)) >= 1
    except (httpx.TransportError, ValueError):
        return False


def test_gateway_killed_mid_run_runner_waits_and_resumes(
    tmp_path: Path,
    db_url: str,
    database: Database,
    models_dir: Path,
    worker_launcher: WorkerLauncher,
) -> None:
    start_demo_worker(worker_launcher, database, models_dir)
    port = free_port()
    home = tmp_path / "gw-home"
    home.mkdir()
    client = openai_client(f"http://127.0.0.1:{port}/v1")
    with gateway_process(db_url, home, port) as gateway:
        batch, ids = submit(client, tmp_path, 10)
        wait_for(lambda: done_lines(database, batch.id) >= 2, timeout_s=180, step_s=0.2)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(timeout=30)
    time.sleep(3)  # the runner meets a closed port meanwhile
    wait_for(lambda: "gateway unreachable" in runner_log(database, batch.id), timeout_s=30)
    with gateway_process(db_url, home, port):
        final = wait_batch(client, batch.id, timeout_s=300)
        assert final.status == "completed"
        output, errors = exactly_once(client, final, ids)
        assert len(output) == 10 and not errors


def test_postgres_stopped_30s_mid_run_nothing_lost_or_twice(
    own_postgres: tuple[Path, str],
    tmp_path: Path,
    models_dir: Path,
) -> None:
    pgdata, url = own_postgres
    database = Database(url)
    launcher = WorkerLauncher(db_url=url, home=tmp_path / "herd-home", models_dir=models_dir)
    try:
        start_demo_worker(launcher, database, models_dir)
        with batch_gateway(tmp_path, url) as gateway:
            gateway.wait_workers(1)
            client = openai_client(gateway.v1)
            batch, ids = submit(client, tmp_path, 12, max_tokens=6)
            wait_for(lambda: done_lines(database, batch.id) >= 2, timeout_s=180, step_s=0.2)
            embedded_postgres(pgdata, "stop")
            time.sleep(OUTAGE_S)
            embedded_postgres(pgdata, "start")
            final = wait_batch(client, batch.id, timeout_s=300)
            assert final.status == "completed"
            output, errors = exactly_once(client, final, ids)
            assert len(output) == 12 and not errors
    finally:
        launcher.kill_all()
        database.close()


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _waits_quietly_then_ends(pid: int, what: str) -> float:
    """Assert the runner pid does not spin while it waits out a fault (under a fifth of a
    core, heartbeats every 0.2 s included), and ends by itself within GIVE_UP_S and some
    slack; the CPU seconds it used over 5 s."""
    runner = psutil.Process(pid)
    time.sleep(1)  # the lines in flight when the fault began land first
    before = sum(runner.cpu_times()[:2])
    time.sleep(5)
    used_s = sum(runner.cpu_times()[:2]) - before
    print(f"{what}: the waiting runner used {used_s:.2f} CPU s in 5 s")
    assert used_s < 1.0, f"{what}: the waiting runner used {used_s:.2f} CPU s in 5 s"
    wait_for(lambda: _ended(pid), timeout_s=GIVE_UP_S + 40, step_s=0.5)
    return used_s


# A worker start, three runners and two give-ups: more than the default 300 s when busy.
@pytest.mark.timeout(900)
def test_runner_without_gateway_or_database_ends_and_the_batch_resumes(
    own_postgres: tuple[Path, str],
    tmp_path: Path,
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The gateway process, and the runners it starts, read the give-up time from here.
    monkeypatch.setenv("HERD_BATCH_GIVE_UP_S", str(GIVE_UP_S))
    pgdata, url = own_postgres
    database = Database(url)
    launcher = WorkerLauncher(db_url=url, home=tmp_path / "herd-home", models_dir=models_dir)
    port = free_port()
    home = tmp_path / "gw-home"
    home.mkdir()
    client = openai_client(f"http://127.0.0.1:{port}/v1")
    try:
        start_demo_worker(launcher, database, models_dir)
        # 1. The gateway is gone for good (killed, nothing restarts it): the runner ends,
        # its job failed saying why, and the batch stays in progress.
        with gateway_process(url, home, port) as gateway:
            batch, ids = submit(client, tmp_path, 60, max_tokens=16)
            wait_for(lambda: done_lines(database, batch.id) >= 2, timeout_s=180, step_s=0.2)
            first_job, pid = runner_job(database, batch.id)
            assert pid is not None
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(timeout=30)
        _waits_quietly_then_ends(pid, "no gateway")
        with database.engine.connect() as conn:
            job = conn.execute(
                text("SELECT state, error FROM jobs WHERE id = :j"), {"j": first_job}
            ).one()
            status = conn.execute(
                text("SELECT status FROM batches WHERE id = :b"), {"b": batch.id}
            ).scalar_one()
        assert job.state == "failed" and "accepted a connection" in job.error, job
        assert status == "in_progress"
        left = 60 - done_lines(database, batch.id)
        assert left > 0

        # 2. A gateway again: its watch starts a new runner, which goes on. Then PostgreSQL
        # stops for good: that runner ends too, though the gateway still answers.
        with gateway_process(url, home, port):
            wait_for(lambda: runner_job(database, batch.id)[0] != first_job, timeout_s=60)
            wait_for(lambda: 60 - done_lines(database, batch.id) < left, timeout_s=120)
            second_job, pid = runner_job(database, batch.id)
            assert pid is not None
            embedded_postgres(pgdata, "stop")
            _waits_quietly_then_ends(pid, "no database")
            log = (home / "logs" / "jobs" / f"{second_job}.log").read_text()
            assert f"no database for {GIVE_UP_S:g} s" in log

            # 3. The database back: the stale runner job is reaped, a third runner
            # finishes the batch; every line exactly once.
            embedded_postgres(pgdata, "start")
            final = wait_batch(client, batch.id, timeout_s=300)
            assert final.status == "completed"
            output, errors = exactly_once(client, final, ids)
            assert len(output) == 60 and not errors
    finally:
        launcher.kill_all()
        database.close()
