"""`herd up` keeps its parts running (issue 21): with calls running against `herd up --demo`,
kill -9 the gateway, then the dashboard, then the supervisor, then the embedded PostgreSQL.
Each comes back by itself, a chat call succeeds within 10 s of each kill, /metrics counts
one restart of each, and the request rows reconcile with the calls answered (as
tests/test_faults.py counts: a gateway killed -9 loses at most its last flush interval)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.db.database import Database
from app.db.embedded import running_url
from tests.conftest import free_port
from tests.gateway_harness import Ledger, Load, wait_for
from tests.test_up import HerdUp

KILL_TO_ANSWER_S = 10.0
COME_BACK_S = 60.0
FLUSH_MS = 100
NODE = "node-up"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _restarts(gateway: str) -> dict[str, int]:
    """herd_process_restarts_total of this node, per process, as the gateway shows them."""
    metrics = httpx.get(f"{gateway}/metrics", timeout=10).text
    found = re.findall(
        rf'^herd_process_restarts_total{{host="{NODE}",process="(\w+)"}} (\d+)$',
        metrics,
        re.MULTILINE,
    )
    return {process: int(n) for process, n in found}


@pytest.mark.timeout(900)
def test_up_brings_back_each_part_killed_under_load(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ports = {name: free_port() for name in ("dashboard", "supervisor", "gateway")}
    env = {k: v for k, v in os.environ.items() if k != "HERD_DATABASE_URL"}
    env.update(
        HERD_HOME=str(home),
        HERD_MODELS_DIR=str(tmp_path / "models"),
        HERD_DASHBOARD_PORT=str(ports["dashboard"]),
        HERD_SUPERVISOR_PORT=str(ports["supervisor"]),
        HERD_GATEWAY_PORT=str(ports["gateway"]),
        HERD_LOG_FLUSH_MS=str(FLUSH_MS),
        HERD_NODE_NAME=NODE,
    )
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    health = {
        "gateway": f"{gateway}/health",
        "dashboard": f"http://127.0.0.1:{ports['dashboard']}/_stcore/health",
        "supervisor": f"http://127.0.0.1:{ports['supervisor']}/health",
    }
    markers = {"gateway": "app.cli gateway", "dashboard": "streamlit",
               "supervisor": "app.cli supervisor"}  # fmt: skip
    pgdata = home / "pgdata"
    up = HerdUp(env, "--demo")
    load = None
    database = None
    try:
        output = up.wait_for("herd is up")
        assert "is not served yet" not in output, output
        sql = re.search(r"^SQL: +(\S+)", output, re.MULTILINE)
        assert sql, output
        database = db = Database(sql.group(1))
        ledger = Ledger()
        load = calls = Load(gateway, ledger, restarts=True, alias="demo", max_tokens=4)
        calls.answered_more(4)

        def child(name: str) -> psutil.Process | None:
            for process in psutil.Process(up.process.pid).children():
                try:
                    cmdline = " ".join(process.cmdline())
                except (psutil.ZombieProcess, psutil.NoSuchProcess):
                    continue  # a killed child not reaped yet: not the one serving
                if markers[name] in cmdline:
                    return process
            return None

        def postmaster() -> int | None:
            try:
                return int((pgdata / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):  # being written
                return None

        def queried() -> bool:
            try:
                with db.engine.connect() as conn:
                    return conn.execute(text("SELECT 1")).scalar_one() == 1
            except OperationalError:
                return False

        def answered_since(killed_at: float, what: str) -> None:
            wait_for(lambda: max(list(calls.done_at.values())) > killed_at, 30, step_s=0.05)
            first = min(t for t in list(calls.done_at.values()) if t > killed_at)
            assert first - killed_at <= KILL_TO_ANSWER_S, (what, first - killed_at, calls.seen)

        gateway_killed_at = time.monotonic()
        for name in ("gateway", "dashboard", "supervisor"):
            old = child(name)
            assert old is not None, name
            killed_at = time.monotonic()
            old.send_signal(signal.SIGKILL)
            if name == "gateway":
                gateway_killed_at = killed_at
            answered_since(killed_at, name)

            def back(name: str = name, pid: int = old.pid) -> bool:
                new = child(name)
                return new is not None and new.pid != pid and _healthy(health[name])

            wait_for(back, COME_BACK_S, step_s=0.2)
            assert _restarts(gateway).get(name) == 1, _restarts(gateway)

        old_postmaster = postmaster()
        killed_at = time.monotonic()
        assert old_postmaster is not None
        os.kill(old_postmaster, signal.SIGKILL)
        answered_since(killed_at, "postgres")  # the gateway serves on, spooling its rows
        wait_for(lambda: postmaster() not in (None, old_postmaster) and queried(), COME_BACK_S, 0.2)
        wait_for(lambda: _restarts(gateway).get("postgres") == 1, 30, step_s=0.5)
        calls.answered_more(4)
        calls.stop()
        assert not calls.errors, calls.errors
        assert _restarts(gateway) == dict.fromkeys([*markers, "postgres"], 1)
        up.wait_for("gateway was killed by SIGKILL; restarting it in 0.5 s", 5)

        def settled() -> bool:
            state = httpx.get(health["gateway"], timeout=5).json()
            rows = state["log_spooled_rows"] + state["log_pending_rows"]
            return bool(rows + state["log_held_rows"] == 0)

        wait_for(settled, 30)
        with db.engine.connect() as conn:
            rows = set(conn.execute(text("SELECT id::text FROM requests")).scalars())
        # A gateway killed -9 loses the rows of its last flush interval, nothing older, and
        # nothing is lost to the other kills.
        missing = set(ledger.response_ids) - rows
        window_s = FLUSH_MS / 1000 + 1.0
        assert all(
            gateway_killed_at - window_s <= calls.done_at[m] <= gateway_killed_at for m in missing
        ), missing
        ledger.check(db.engine, lost_rows=len(missing))

        assert up.interrupt() == 0
    finally:
        if load is not None:
            load.stop()
        if database is not None:
            database.close()
        up.kill()
    assert running_url(pgdata) is None  # Ctrl-C stops the restarted server too
