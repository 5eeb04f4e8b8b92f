"""Real parts for gateway tests: stub worker processes, a gateway served by uvicorn in a
thread, and the rows (models, deployments) that put workers behind an alias."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Engine, text

from app.config import Settings
from app.db.database import Database
from app.gateway.app import create_app

TESTS = Path(__file__).resolve().parent
START_TIMEOUT_S = 30.0


def wait_for(check: Callable[[], bool], timeout_s: float = 15.0, step_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(step_s)


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
    ) -> StubWorker:
        argv = [
            sys.executable, str(TESTS / "stub_worker.py"), "--db-url", self.db_url,
            "--alias", alias, "--name", name, "--tokens", str(tokens),
            "--token-delay-ms", str(token_delay_ms), "--slots", str(slots),
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
        self.app = create_app(settings, self.database)
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
