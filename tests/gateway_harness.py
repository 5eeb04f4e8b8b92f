"""Real parts for gateway tests: stub worker processes, a gateway served by uvicorn in a
thread, and the rows (models, deployments) that put workers behind an alias."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Engine, text

from app.config import Settings
from app.control.admin_api import admin_router
from app.db.database import Database
from app.gateway.app import create_app

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
START_TIMEOUT_S = 30.0


def wait_for(check: Callable[[], bool], timeout_s: float = 15.0, step_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(step_s)


def embedded_postgres(pgdata: Path, action: str) -> str:
    """Start (returns its URL) or stop the embedded server of pgdata in a child process, as
    another herd command would (pgserver caches server handles per process, which would hide
    a restart here)."""
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


def add_model(engine: Engine, name: str) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                text(
                    "INSERT INTO models (name, path, size_bytes, mtime_ns, status) "
                    "VALUES (:n, :p, 1, 1, 'valid') RETURNING id"
                ),
                {"n": name, "p": f"/nowhere/{name}"},
            ).scalar_one()
        )


def add_deployment(engine: Engine, alias: str, model_id: int, weight: int = 100) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                text(
                    "INSERT INTO deployments (alias, model_id, replicas, traffic_weight) "
                    "VALUES (:a, :m, 1, :w) RETURNING id"
                ),
                {"a": alias, "m": model_id, "w": weight},
            ).scalar_one()
        )


@dataclass
class Ledger:
    """What clients were told, for the count check after a fault: every call the gateway
    answered (any status) must have exactly one `requests` row, every response id handed out
    must be among them, and every acknowledged feedback must be in `feedback`."""

    answered: int = 0
    response_ids: list[str] = field(default_factory=list)
    feedback_ids: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, response_id: str | None = None) -> None:
        with self.lock:
            self.answered += 1
            if response_id is not None:
                self.response_ids.append(response_id)

    def acknowledge(self, feedback_id: int) -> None:
        with self.lock:
            self.feedback_ids.append(feedback_id)

    def check(self, engine: Engine, timeout_s: float = 30.0, lost_rows: int = 0) -> None:
        """Wait for the request log to catch up, then demand exact counts (extra rows fail
        as much as missing ones). lost_rows: rows the gateway reported dropping."""

        def counts() -> tuple[int, int]:
            with engine.connect() as conn:
                requests = conn.execute(text("SELECT count(*) FROM requests")).scalar_one()
                feedback = conn.execute(text("SELECT count(*) FROM feedback")).scalar_one()
            return int(requests), int(feedback)

        expected = (self.answered - lost_rows, len(self.feedback_ids))
        with contextlib.suppress(AssertionError):
            wait_for(lambda: counts() == expected, timeout_s, step_s=0.2)
        found = counts()
        assert found == expected, f"(requests, feedback) rows {found} != told clients {expected}"
        with engine.connect() as conn:
            ids = set(conn.execute(text("SELECT id::text FROM requests")).scalars())
            votes = set(conn.execute(text("SELECT id FROM feedback")).scalars())
        assert len(set(self.response_ids)) == len(self.response_ids), "a response id repeats"
        missing = set(self.response_ids) - ids
        assert len(missing) <= lost_rows, f"{len(missing)} responses handed out have no row"
        assert votes == set(self.feedback_ids)


class Load:
    """Clients calling the gateway without pause until stopped, streamed and not in turn;
    every answer goes into the ledger.

    With restarts=True a client rides out a gateway restart: a refused connection (nothing
    listens), a connection dropped mid-call (the call was in flight) and a 503
    database_unavailable (a gateway that has not loaded its routing yet) are counted by kind
    and the client carries on; anything else ends the client as an error."""

    def __init__(
        self,
        url: str,
        ledger: Ledger,
        *,
        clients: int = 2,
        restarts: bool = False,
        alias: str = "m",
        max_tokens: int | None = None,
    ) -> None:
        self.url = url
        self.alias = alias
        self.max_tokens = max_tokens
        self.ledger = ledger
        self.restarts = restarts
        self.errors: list[BaseException] = []
        self.seen: Counter[str] = Counter()
        self.done_at: dict[str, float] = {}  # response id -> when the client had it
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,)) for c in range(clients)]
        for thread in self._threads:
            thread.start()

    def _call(self, i: int) -> None:
        body: dict[str, Any] = {"model": self.alias,
                                "messages": [{"role": "user", "content": f"call {i}"}],
                                "stream": i % 2 == 1}  # fmt: skip
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        try:
            response = httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=30)
        except httpx.ConnectError:
            if not self.restarts:
                raise
            self.seen["refused"] += 1
            time.sleep(0.05)
            return
        except (httpx.RemoteProtocolError, httpx.ReadError):
            if not self.restarts:
                raise
            self.seen["dropped in flight"] += 1
            return
        if response.status_code == 503 and self.restarts:
            assert response.json()["error"]["code"] == "database_unavailable", response.text
            self.seen["503 database_unavailable"] += 1
            time.sleep(float(response.headers["Retry-After"]) / 5)
            return
        assert response.status_code == 200, response.text
        if body["stream"]:
            assert response.text.rstrip().endswith("data: [DONE]"), response.text
            first = next(line for line in response.text.splitlines() if line.startswith("data: {"))
            response_id = str(json.loads(first[6:])["id"])
        else:
            response_id = str(response.json()["id"])
        self.done_at[response_id] = time.monotonic()
        self.seen["ok"] += 1
        self.ledger.answer(response_id)

    def _run(self, client: int) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self._call(client * 100_000 + i)
            except BaseException as exc:
                self.errors.append(exc)
                return
            i += 1

    def answered_more(self, n: int, timeout_s: float = 60) -> None:
        """Wait until n more calls were answered."""
        target = len(self.ledger.response_ids) + n
        wait_for(lambda: len(self.ledger.response_ids) >= target or bool(self.errors), timeout_s)
        assert not self.errors, self.errors

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


@dataclass
class StubWorker:
    process: subprocess.Popen[bytes]
    worker_id: int
    url: str
    name: str

    def served(self) -> int:
        return int(httpx.get(f"{self.url}/stats", timeout=5).json()["served"])

    def kill9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@dataclass
class Stubs:
    """Starts stub workers for one database; stop_all() in teardown."""

    db_url: str
    started: list[StubWorker] = field(default_factory=list)

    def start(
        self,
        alias: str,
        name: str,
        *,
        deployment_id: int | None = None,
        model_id: int | None = None,
        tokens: int = 5,
        token_delay_ms: float = 0,
        slots: int = 4,
        mode: str = "ok",
    ) -> StubWorker:
        argv = [
            sys.executable, str(TESTS / "stub_worker.py"), "--db-url", self.db_url,
            "--alias", alias, "--name", name, "--tokens", str(tokens),
            "--token-delay-ms", str(token_delay_ms), "--slots", str(slots), "--mode", mode,
        ]  # fmt: skip
        if deployment_id is not None:
            argv += ["--deployment-id", str(deployment_id)]
        if model_id is not None:
            argv += ["--model-id", str(model_id)]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
        line = process.stdout.readline().decode() if ready else ""
        if not line.startswith("READY"):
            process.kill()
            raise AssertionError(f"stub worker {name} did not start: {line!r}")
        _, worker_id, url = line.split()
        stub = StubWorker(process, int(worker_id), url, name)
        self.started.append(stub)
        return stub

    def stop_all(self) -> None:
        for stub in self.started:
            if stub.process.poll() is None:
                stub.process.kill()
                stub.process.wait(timeout=10)


class GatewayThread:
    """The real gateway app served by uvicorn on a free port, in a thread of the test."""

    def __init__(self, settings: Settings, db_url: str) -> None:
        self.database = Database(db_url)
        self.app = create_app(settings, self.database, [admin_router()])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        wait_for(lambda: self.server.started, START_TIMEOUT_S)

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/health", timeout=5).json()
        return body

    def wait_workers(self, n: int) -> None:
        """Until the gateway's routing state shows n live workers."""
        wait_for(lambda: self.health()["live_workers"] == n)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.database.close()


def gateway_settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": tmp_path / "herd-home",
        "database_url": db_url,
        "gateway_refresh_s": 0.2,
        "log_flush_ms": 100,
        # Calls to an alias without a live worker get 503 at once, as tests expect, unless a
        # test asks for the scale-from-zero hold (tests/test_placement.py).
        "gateway_cold_start_s": 0,
        **overrides,
    }
    return Settings(**values)


@dataclass
class ServedAlias:
    """A gateway with one stub worker behind an alias, on a database of its own."""

    url: str
    database: Database
    gateway: GatewayThread
    stub: StubWorker


@contextmanager
def served_alias(
    db_url: str, home: Path, alias: str, name: str = "stub", **overrides: Any
) -> Iterator[ServedAlias]:
    """Start a stub worker serving alias and a gateway in front of it; stop both after."""
    database = Database(db_url)
    stubs = Stubs(db_url)
    gateway = None
    try:
        model_id = add_model(database.engine, f"{alias}.gguf")
        deployment_id = add_deployment(database.engine, alias, model_id)
        stub = stubs.start(alias, name, deployment_id=deployment_id, model_id=model_id, tokens=3)
        gateway = GatewayThread(gateway_settings(home, db_url, **overrides), db_url)
        gateway.wait_workers(1)
        yield ServedAlias(gateway.url, database, gateway, stub)
    finally:
        if gateway is not None:
            gateway.stop()
        stubs.stop_all()
        database.close()
