"""PostgreSQL stopped under load: the gateway keeps serving, spools request rows to disk
under HERD_HOME, refuses feedback with a retryable 503, and after the restart every request
has exactly one row. Uses its own embedded server, so stopping it disturbs no other test."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_harness import GatewayThread, Stubs, add_deployment, add_model, gateway_settings
from gateway_harness import wait_for as wait_until
from sqlalchemy import text

from app.db import migrate
from app.db.database import Database

REPO = Path(__file__).resolve().parents[1]


def _pg(pgdata: Path, action: str) -> str:
    """Start or stop the embedded server in a child process, as another herd command would
    (pgserver caches server handles per process, which would hide a restart here)."""
    code = {
        "start": "from app.db.embedded import EmbeddedPostgres as E; "
        f"print(E(Path({str(pgdata)!r})).start(keep_running=True))",
        "stop": f"from app.db.embedded import stop_server; stop_server(Path({str(pgdata)!r}))",
    }[action]
    done = subprocess.run(
        [sys.executable, "-c", f"from pathlib import Path; {code}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    pgdata = tmp_path / "pg" / "pgdata"
    pgdata.parent.mkdir()
    url = _pg(pgdata, "start")
    migrate.upgrade(url)
    yield pgdata, url
    _pg(pgdata, "stop")


def _call(gateway: GatewayThread, i: int) -> str:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": f"call {i}"}],
        "stream": i % 2 == 1,
    }
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    if not body["stream"]:
        return str(response.json()["id"])
    assert response.text.rstrip().endswith("data: [DONE]")
    first = next(line for line in response.text.splitlines() if line.startswith("data: {"))
    return first.split('"id":"', 1)[1].split('"', 1)[0]


def test_database_outage_spools_and_replays_without_loss_or_duplicates(
    own_postgres: tuple[Path, str], tmp_path: Path
) -> None:
    pgdata, url = own_postgres
    database = Database(url)
    stubs = Stubs(url)
    gateway = None
    try:
        model = add_model(database.engine, "m.gguf")
        deployment = add_deployment(database.engine, "m", model)
        for name in ("a", "b"):
            stubs.start("m", name, deployment_id=deployment, model_id=model)
        settings = gateway_settings(tmp_path, url)
        gateway = GatewayThread(settings, url)
        gateway.wait_workers(2)

        # Two clients call without pause for the whole test, outage included.
        ids: list[str] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def load(client: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    ids.append(_call(gateway, client * 10_000 + i))  # type: ignore[arg-type]
                except BaseException as exc:
                    failures.append(exc)
                    return
                i += 1

        loaders = [threading.Thread(target=load, args=(c,)) for c in range(2)]
        for thread in loaders:
            thread.start()
        wait_until(lambda: len(ids) >= 10)
        _pg(pgdata, "stop")
        wait_until(lambda: gateway is not None and gateway.health()["database"] == "unreachable")
        during = len(ids)
        wait_until(lambda: len(ids) >= during + 20 and gateway.health()["log_spooled_rows"] > 0)
        spooled = list(settings.spool_dir.glob("requests-*.jsonl"))
        assert spooled and sum(len(p.read_bytes().splitlines()) for p in spooled) > 0
        vote = httpx.post(
            f"{gateway.url}/v1/feedback", json={"response_id": ids[-1], "rating": 1}, timeout=30
        )
        assert vote.status_code == 503 and vote.headers["Retry-After"] == "1"
        assert vote.json()["error"]["code"] == "database_unavailable"

        _pg(pgdata, "start")
        after = len(ids)
        wait_until(lambda: len(ids) >= after + 10)
        stop.set()
        for thread in loaders:
            thread.join(timeout=30)
        assert not failures, failures
        wait_until(
            lambda: (
                gateway is not None
                and gateway.health()["log_spooled_rows"] == 0
                and gateway.health()["log_pending_rows"] == 0
            ),
            timeout_s=30,
        )
        with database.engine.connect() as conn:
            found = conn.execute(text("SELECT id::text FROM requests")).scalars().all()
            messages = conn.execute(text("SELECT count(*) FROM messages")).scalar_one()
        assert len(set(ids)) == len(ids)
        assert sorted(found) == sorted(ids)
        assert messages == len(ids)
        # Feedback works again; a vote retried after the 503 lands once.
        for _ in range(2):
            vote = httpx.post(
                f"{gateway.url}/v1/feedback", json={"response_id": ids[-1], "rating": 1}
            )
            assert vote.status_code == 200
        with database.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM feedback")).scalar_one() == 1
    finally:
        if gateway is not None:
            gateway.stop()
        stubs.stop_all()
        database.close()
