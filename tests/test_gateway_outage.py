"""PostgreSQL stopped for 30 s under load (issue #7): the gateway keeps serving, spools
request rows to disk under HERD_HOME and replays them once; feedback gets a retryable 503
and none that was acknowledged is lost; the dashboard says "database unavailable" instead of
a stack trace and recovers by itself. Uses its own embedded server, so stopping it disturbs
no other test. Takes about a minute (OUTAGE_S of it with the database down)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from app.control.accounts import Role
from app.db.database import Database
from tests.conftest import REPO_ROOT, log_in_as
from tests.gateway_harness import (
    GatewayThread,
    Ledger,
    Load,
    Stubs,
    add_deployment,
    add_model,
    embedded_postgres,
    gateway_settings,
)
from tests.gateway_harness import wait_for as wait_until

# How long the database stays down: the 30 s.
OUTAGE_S = 30.0


class Voter:
    """Clicks thumbs on every 5th answer, like a user; on 503 waits Retry-After and clicks
    again, as a client told "retryable" should."""

    def __init__(self, gateway: GatewayThread, ledger: Ledger) -> None:
        self.gateway = gateway
        self.ledger = ledger
        self.refused = 0  # 503 answers seen
        self.waiting: list[str] = []

    def vote(self, response_id: str) -> bool:
        """True when acknowledged; False (kept for a retry) on a retryable 503."""
        body = {"response_id": response_id, "rating": 1, "user": "u"}
        response = httpx.post(f"{self.gateway.url}/v1/feedback", json=body, timeout=30)
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
            assert response.json()["error"]["code"] == "database_unavailable"
            self.refused += 1
            return False
        assert response.status_code == 200, response.text
        self.ledger.acknowledge(int(response.json()["id"]))
        return True

    def run(self, stop: threading.Event) -> None:
        voted = 0
        while not stop.is_set() or self.waiting:
            ids = self.ledger.response_ids[voted : len(self.ledger.response_ids) : 5]
            voted += 5 * len(ids)
            retry, self.waiting = self.waiting, []
            for response_id in retry + ids:
                if not self.vote(response_id):
                    self.waiting.append(response_id)
            time.sleep(1.0 if self.waiting else 0.1)


def _overview(monkeypatch: pytest.MonkeyPatch, url: str, home: Path) -> AppTest:
    """A run of the dashboard's Overview page, as a logged-in viewer, against url."""
    monkeypatch.setenv("HERD_DATABASE_URL", url)
    monkeypatch.setenv("HERD_HOME", str(home))
    app = AppTest.from_file(str(REPO_ROOT / "pages" / "overview.py"), default_timeout=30)
    log_in_as(app, "ops", Role.VIEWER)
    app.run()
    assert not app.exception, app.exception  # never a stack trace
    return app


def test_database_outage_spools_and_replays_without_loss_or_duplicates(
    own_postgres: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pgdata, url = own_postgres
    database = Database(url)
    stubs = Stubs(url)
    gateway = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    load = None
    try:
        model = add_model(database.engine, "m.gguf")
        deployment = add_deployment(database.engine, "m", model)
        for name in ("a", "b"):
            stubs.start("m", name, deployment_id=deployment, model_id=model)
        settings = gateway_settings(tmp_path, url)
        gateway = GatewayThread(settings, url)
        gateway.wait_workers(2)
        dashboard = _overview(monkeypatch, url, tmp_path / "dashboard-home")
        assert dashboard.title[0].value == "Overview" and not dashboard.error

        # Two clients call without pause, and a user votes, for the whole test.
        ledger = Ledger()
        voter = Voter(gateway, ledger)
        failures: list[BaseException] = []

        def vote() -> None:
            try:
                voter.run(stop)
            except BaseException as exc:
                failures.append(exc)

        load = Load(gateway.url, ledger)
        threads = [threading.Thread(target=vote)]
        threads[0].start()
        wait_until(lambda: len(ledger.feedback_ids) >= 2)

        embedded_postgres(pgdata, "stop")
        down_at = time.monotonic()
        wait_until(lambda: gateway is not None and gateway.health()["database"] == "unreachable")
        load.answered_more(20)
        wait_until(lambda: gateway is not None and gateway.health()["log_spooled_rows"] > 0)
        spooled = list(settings.spool_dir.glob("requests-*.jsonl"))
        assert spooled and sum(len(p.read_bytes().splitlines()) for p in spooled) > 0
        dashboard.run()
        assert not dashboard.exception, dashboard.exception
        assert "Database unavailable" in dashboard.error[0].value
        assert "recovers by itself" in dashboard.error[0].value
        wait_until(lambda: voter.refused > 0)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        assert not failures and not load.errors, (failures, load.errors)

        embedded_postgres(pgdata, "start")
        load.answered_more(10)
        # The same page run again (what its auto-retry does): the figures are back.
        dashboard.run()
        assert not dashboard.exception and not dashboard.error, dashboard.error
        assert dashboard.title[0].value == "Overview"
        load.stop()
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert not failures and not load.errors, (failures, load.errors)
        assert not voter.waiting
        wait_until(
            lambda: (
                gateway is not None
                and gateway.health()["log_spooled_rows"] == 0
                and gateway.health()["log_pending_rows"] == 0
            ),
            timeout_s=30,
        )
        ledger.check(database.engine)
        with database.engine.connect() as conn:
            found = conn.execute(text("SELECT id::text FROM requests")).scalars().all()
            messages = conn.execute(text("SELECT count(*) FROM messages")).scalar_one()
        assert sorted(found) == sorted(ledger.response_ids)
        assert messages == len(found)
        # A vote retried after the 503 lands once.
        for _ in range(2):
            voter.vote(ledger.response_ids[-1])
        with database.engine.connect() as conn:
            votes = conn.execute(
                text("SELECT count(*) FROM feedback WHERE request_id = CAST(:r AS uuid)"),
                {"r": ledger.response_ids[-1]},
            ).scalar_one()
        assert votes == 1
    finally:
        if load is not None:
            load.stop()
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        if gateway is not None:
            gateway.stop()
        stubs.stop_all()
        database.close()
