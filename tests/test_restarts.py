"""How `herd up` restarts what it runs (app/processes/restarts.py): backoff, crash loops
reported with their log, counts kept in the database and shown on /metrics and Overview;
the embedded PostgreSQL started again after a kill -9. The whole stack under kill -9 is in
tests/test_up_restarts.py."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from app.control.accounts import Role
from app.db.database import Database
from app.db.embedded import EmbeddedPostgres
from app.db.process_restarts import ProcessRestarts
from app.processes.launcher import ChildWatch, ProcessGroup, Service
from app.processes.restarts import Backoff, RestartBook, Restarter, RestartPolicy
from tests.conftest import run_page
from tests.gateway_harness import GatewayThread, gateway_settings, wait_for


def test_backoff_doubles_to_its_longest_and_starts_over_after_a_healthy_minute() -> None:
    backoff = Backoff(RestartPolicy())
    delays = []
    for now in range(9):
        delays.append(backoff.exited(float(now)))
        backoff.started(float(now))
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.crash_looping  # 9 exits within 2 minutes
    assert not backoff.settled(8 + 59.0)
    assert backoff.settled(8 + 60.0)
    assert backoff.exited(100.0) == 0.5 and not backoff.crash_looping

    # Five exits spread over more than two minutes are no crash loop.
    spread = Backoff(RestartPolicy())
    for now in (0.0, 40.0, 80.0, 120.0, 160.0):
        spread.exited(now)
    assert not spread.crash_looping


def test_a_crashing_child_is_restarted_counted_and_reported_with_its_log(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    log_file = tmp_path / "logs" / "boom.log"
    service = Service(
        name="boom",
        argv=[sys.executable, "-c", "import sys; print('boom: out of widgets'); sys.exit(3)"],
        health_url="http://127.0.0.1:1/unused",
        public_url="",
        log_file=log_file,
    )
    group = ProcessGroup(dict(os.environ))
    said: list[str] = []
    book = RestartBook(ProcessRestarts(database.engine), "node-a")
    policy = RestartPolicy(first_delay_s=0.01, max_delay_s=0.04, crash_loop_exits=4)
    restarter = Restarter([ChildWatch(group, group.start(service))], said.append, book, policy)
    try:
        deadline = time.monotonic() + 30
        while not any("keeps crashing" in line for line in said):
            assert time.monotonic() < deadline, said
            restarter.tick()
            time.sleep(0.01)
    finally:
        group.stop_all()
        book.close()

    assert said[0].startswith("boom exited with code 3; restarting it in 0.01 s")
    report = next(line for line in said if "keeps crashing" in line)
    assert "4 exits within 120 s" in report and str(log_file) in report
    assert report.endswith("boom: out of widgets")  # the log's tail, as the child wrote it
    assert "--- herd up: boom exited with code 3; starting it again" in log_file.read_text()
    restarts = sum(line.startswith("boom exited") for line in said) - 1  # the last: pending
    [row] = ProcessRestarts(database.engine).all()
    assert (row.host, row.process, row.last_exit_code) == ("node-a", "boom", 3)
    assert row.restarts >= restarts and row.failing_since is not None
    assert row.log_path == str(log_file)

    # Shown where operators look: Overview and the gateway's /metrics.
    monkeypatch.setenv("HERD_DATABASE_URL", db_url)
    monkeypatch.setenv("HERD_HOME", str(tmp_path / "home"))
    page = run_page("overview.py", Role.VIEWER)
    table = page.dataframe[0].value
    assert list(table["process"]) == ["boom"] and list(table["restarts"]) == [row.restarts]
    assert list(table["last exit"]) == ["exited with code 3"]
    assert any("boom on node-a keeps crashing" in w.value for w in page.warning)
    gateway = GatewayThread(gateway_settings(tmp_path, db_url), db_url)
    try:
        metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    finally:
        gateway.stop()
    labels = '{host="node-a",process="boom"}'
    assert f"herd_process_restarts_total{labels} {row.restarts}" in metrics
    assert f"herd_process_crash_looping{labels} 1" in metrics


def test_restart_counts_wait_in_memory_while_the_database_is_unreachable(
    database: Database,
) -> None:
    nowhere = Database("postgresql://nobody@127.0.0.1:1/none")
    book = RestartBook(ProcessRestarts(nowhere.engine), "node-b")
    try:
        book.restarted("gateway", -signal.SIGKILL, Path("gateway.log"))
        assert not book.flush() and book.pending == 1
        book.store = ProcessRestarts(database.engine)  # the database answers again
        wait_for(lambda: book.pending == 0, 15)  # written by the book's own thread
    finally:
        book.close()
        nowhere.close()
    [row] = ProcessRestarts(database.engine).all()
    assert (row.process, row.restarts, row.last_exit_code) == ("gateway", 1, -9)
    assert row.log_path == "gateway.log" and row.failing_since is None


def test_the_embedded_server_is_started_again_after_a_kill_9(tmp_path: Path) -> None:
    embedded = EmbeddedPostgres(tmp_path / "pgdata")
    url = embedded.start()
    database = Database(url)
    try:
        with database.engine.begin() as conn:
            conn.execute(text("CREATE TABLE kept (n int)"))
            conn.execute(text("INSERT INTO kept VALUES (1)"))
        assert embedded.alive()
        postmaster = int((embedded.pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        wait_for(lambda: not embedded.alive(), 10)

        def restarted() -> bool:
            try:
                return embedded.restart() == url
            except Exception:  # its backends may still hold the shared memory for a moment
                return False

        wait_for(restarted, 60, step_s=0.5)
        assert embedded.alive()
        with database.engine.connect() as conn:
            assert conn.execute(text("SELECT n FROM kept")).scalar_one() == 1
    finally:
        database.close()
        embedded.release()
    assert not embedded.alive()
