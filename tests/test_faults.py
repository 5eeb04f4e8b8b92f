"""Faults the gateway survives, each with real processes and the count check after it:
workers that hang or answer garbage, a full disk under the spool while PostgreSQL is down,
and the `herd gateway` process itself restarted under load."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.db.database import Database
from app.gateway.spool import Spool
from tests.conftest import REPO_ROOT as REPO
from tests.conftest import free_port
from tests.gateway_harness import (
    GatewayThread,
    Ledger,
    Load,
    Stubs,
    add_deployment,
    add_model,
    embedded_postgres,
    gateway_settings,
    wait_for,
)

# Each misbehaviour of tests/stub_worker.py, and what a streaming client sees: a plain
# OpenAI error (nothing was streamed yet) or, after the first token, an SSE error event.
MISBEHAVIOURS = {
    "hang": "error",
    "hang-mid-stream": "sse-error",
    "invalid-json": "error",
    "broken-sse": "error",
    "broken-mid-stream": "sse-error",
    "html": "error",
}
TIMEOUT_S = 1.0


def _assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"], error
    return error


def _call(url: str, alias: str, stream: bool) -> httpx.Response:
    body = {"model": alias, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_hung_and_garbage_workers_get_bounded_timeouts_and_clear_errors(
    db_url: str, tmp_path: Path
) -> None:
    database = Database(db_url)
    stubs = Stubs(db_url)
    gateway = None
    ledger = Ledger()
    try:
        for alias in [*MISBEHAVIOURS, "good"]:
            model = add_model(database.engine, f"{alias}.gguf")
            deployment = add_deployment(database.engine, alias, model)
            mode = "ok" if alias == "good" else alias
            stubs.start(alias, alias, deployment_id=deployment, model_id=model, mode=mode)
        # No cool-down: every call reaches its misbehaving worker instead of a 503.
        settings = gateway_settings(
            tmp_path,
            db_url,
            gateway_first_token_timeout_s=TIMEOUT_S,
            gateway_inter_token_timeout_s=TIMEOUT_S,
            gateway_cooldown_s=0,
        )
        gateway = GatewayThread(settings, db_url)
        gateway.wait_workers(len(MISBEHAVIOURS) + 1)

        results: dict[tuple[str, bool], tuple[httpx.Response, float]] = {}
        good: list[httpx.Response] = []

        def bad_call(alias: str, stream: bool) -> None:
            started = time.monotonic()
            response = _call(gateway.url, alias, stream)  # type: ignore[union-attr]
            results[(alias, stream)] = (response, time.monotonic() - started)
            ledger.answer()

        def good_calls() -> None:
            # While every bad call is stuck in its timeout, the good alias keeps answering.
            for i in range(10):
                response = _call(gateway.url, "good", i % 2 == 1)  # type: ignore[union-attr]
                good.append(response)
                ledger.answer()

        threads = [
            threading.Thread(target=bad_call, args=(alias, stream))
            for alias in MISBEHAVIOURS
            for stream in (False, True)
        ] + [threading.Thread(target=good_calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a client hung"

        assert [r.status_code for r in good] == [200] * 10
        for (alias, stream), (response, elapsed_s) in sorted(results.items()):
            # Bounded: the timeout, plus the slack of a busy 2-core machine, never more.
            assert elapsed_s < TIMEOUT_S + 8, (alias, stream, elapsed_s)
            if stream and MISBEHAVIOURS[alias] == "sse-error":
                assert response.status_code == 200
                events = [
                    json.loads(line[6:])
                    for line in response.text.splitlines()
                    if line.startswith("data: {")
                ]
                assert events[0]["choices"][0]["delta"]["content"] == "first"
                error = events[-1]["error"]
                assert error["code"] == "upstream_failed" and error["type"] == "upstream_error"
                assert "data: [DONE]" not in response.text
            else:
                error = _assert_openai_error(response, 502, "upstream_failed")
                assert "could answer" in error["message"], error

        metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
        assert 'kind="timeout"' in metrics and 'kind="broken"' in metrics
        assert gateway.health()["status"] == "ok"  # nothing crashed
        assert _call(gateway.url, "good", False).status_code == 200
        ledger.answer()
        ledger.check(database.engine)
    finally:
        if gateway is not None:
            gateway.stop()
        stubs.stop_all()
        database.close()


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small RAM file system mounted at path for the test (root only), unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def test_spool_write_refused_by_a_full_disk_leaves_no_torn_line(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "spool", "16k") as directory:
        spool = Spool(directory)
        rows = [{"i": i, "pad": "x" * 200} for i in range(10)]
        spool.append(rows)
        # Larger than the space left: part of it lands before the disk refuses the rest.
        with pytest.raises(OSError, match="No space left"):
            spool.append([{"i": 99, "pad": "y" * 20_000}])
        assert spool.rows == 10
        assert spool.path.read_bytes().endswith(b"\n")
        assert spool.read_own() == rows
        spool.append([{"i": 10}])  # what fits still goes, after the whole rows before it
        assert spool.read_own() == [*rows, {"i": 10}]
        spool.close()


MEMORY_ROWS = 30


def test_full_spool_disk_with_database_down_holds_then_drops_rows_and_says_so(
    own_postgres: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pgdata, url = own_postgres
    database = Database(url)
    stubs = Stubs(url)
    gateway = None
    load = None
    ledger = Ledger()
    settings = gateway_settings(tmp_path, url, log_memory_max_rows=MEMORY_ROWS)
    caplog.set_level(logging.WARNING, logger="app.gateway.request_log")
    with tmpfs(settings.spool_dir, "64k"):
        try:
            model = add_model(database.engine, "m.gguf")
            deployment = add_deployment(database.engine, "m", model)
            stubs.start("m", "a", deployment_id=deployment, model_id=model)
            gateway = GatewayThread(settings, url)
            gateway.wait_workers(1)
            load = Load(gateway.url, ledger)
            load.answered_more(10)

            embedded_postgres(pgdata, "stop")
            # Rows spool until the 64 KiB are full, then wait in memory, then are dropped;
            # every call is answered all along.
            wait_for(lambda: gateway.health()["log_lost_rows"] > 0, 60)  # type: ignore[union-attr]
            load.answered_more(10)
            health = gateway.health()
            assert "No space left on device" in health["spool_error"]
            assert health["log_spooled_rows"] > 0
            assert health["log_held_rows"] == MEMORY_ROWS
            metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
            assert "herd_gateway_spool_writable 0" in metrics
            assert f"herd_gateway_log_held_rows {MEMORY_ROWS}" in metrics
            assert "CANNOT SPOOL REQUEST ROWS" in caplog.text and "DROPPED" in caplog.text

            embedded_postgres(pgdata, "start")
            load.answered_more(10)
            load.stop()
            assert not load.errors, load.errors

            def settled() -> bool:
                h = gateway.health()  # type: ignore[union-attr]
                return h["log_spooled_rows"] + h["log_held_rows"] + h["log_pending_rows"] == 0

            wait_for(settled, 30)
            health = gateway.health()
            assert health["spool_error"] is None and health["database"] == "ok"
            # Exactly the rows the gateway said it dropped are missing; no other.
            lost = health["log_lost_rows"]
            assert 0 < lost < ledger.answered
            ledger.check(database.engine, lost_rows=lost)
            assert f"herd_gateway_log_lost_rows {lost}" in httpx.get(f"{gateway.url}/metrics").text
        finally:
            if load is not None:
                load.stop()
            if gateway is not None:
                gateway.stop()
            stubs.stop_all()
            database.close()


class GatewayProcess:
    """A real `herd gateway` process on a fixed port and HERD_HOME, as an operator runs it."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "app.cli", "gateway", "--port", str(self.port)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        return self.process

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/health", timeout=5).json()
        return body

    def serving(self) -> bool:
        try:
            return self.health()["live_workers"] > 0
        except httpx.TransportError:
            return False

    def stop(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)


def test_gateway_restarted_under_load_loses_only_in_flight_calls(
    own_postgres: tuple[Path, str], tmp_path: Path
) -> None:
    pgdata, url = own_postgres
    home = tmp_path / "herd-home"
    flush_ms = 100
    env = {**os.environ, "HERD_DATABASE_URL": url, "HERD_HOME": str(home),
           "HERD_LOG_FLUSH_MS": str(flush_ms), "HERD_GATEWAY_REFRESH_S": "0.2"}  # fmt: skip
    gateway = GatewayProcess(env, free_port(), tmp_path / "gateway.log")
    database = Database(url)
    stubs = Stubs(url)
    load = None
    ledger = Ledger()
    try:
        model = add_model(database.engine, "m.gguf")
        deployment = add_deployment(database.engine, "m", model)
        stubs.start("m", "a", deployment_id=deployment, model_id=model)
        gateway.start()
        wait_for(gateway.serving, 60)
        load = Load(gateway.url, ledger, restarts=True)
        load.answered_more(10)

        # 1. SIGTERM while the database is down: the spooled rows stay on disk for the
        # next gateway; calls being answered finish (graceful shutdown).
        embedded_postgres(pgdata, "stop")
        wait_for(lambda: gateway.health()["log_spooled_rows"] > 0, 30)
        load.answered_more(10)
        # A graceful stop (the log says "Application shutdown complete"); uvicorn re-raises
        # the signal once done, so the status may read "killed by SIGTERM".
        assert gateway.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in gateway.log.read_text()
        spooled = sum(len(p.read_bytes().splitlines()) for p in (home / "spool").glob("*.jsonl"))
        assert spooled > 0
        # No database, no gateway: it says why in one line and exits instead of hanging.
        failed = gateway.start()
        assert failed.wait(timeout=60) == 1
        assert "herd: " in gateway.log.read_text()
        embedded_postgres(pgdata, "start")
        gateway.start()
        wait_for(gateway.serving, 60)
        load.answered_more(10)
        wait_for(lambda: not list((home / "spool").glob("*.jsonl")), 30)  # replayed
        # Only a call caught between uvicorn's accept and its shutdown can drop: one per
        # client at most.
        assert load.seen["dropped in flight"] <= 2, load.seen

        # 2. kill -9 with the database up: only calls in flight see a dropped connection.
        load.answered_more(10)
        killed_at = time.monotonic()
        gateway.stop(signal.SIGKILL)
        gateway.start()
        wait_for(gateway.serving, 60)
        load.answered_more(10)
        load.stop()
        assert not load.errors, load.errors
        assert load.seen["dropped in flight"] <= 4, load.seen  # one per client and restart
        assert load.seen["refused"] > 0, load.seen  # the clients did call while it was down

        def settled() -> bool:
            h = gateway.health()
            return h["log_spooled_rows"] + h["log_pending_rows"] + h["log_held_rows"] == 0

        wait_for(settled, 30)
        with database.engine.connect() as conn:
            rows = set(conn.execute(text("SELECT id::text FROM requests")).scalars())
        # kill -9 loses what the gateway had answered but not yet written or spooled: the
        # rows of its last flush interval, nothing older.
        missing = set(ledger.response_ids) - rows
        window_s = flush_ms / 1000 + 1.0
        assert all(load.done_at[m] >= killed_at - window_s for m in missing), missing
        ledger.check(database.engine, lost_rows=len(missing))
    finally:
        if load is not None:
            load.stop()
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop(signal.SIGKILL)
        stubs.stop_all()
        database.close()
