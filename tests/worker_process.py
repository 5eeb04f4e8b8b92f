"""Start real `herd worker` processes for tests, wait for them, and always clean them up.

Reusable by any test that needs a live worker (worker, supervisor, gateway tests):

    launcher = WorkerLauncher(db_url, home)   # or the `worker_launcher` fixture
    worker = launcher.start("--model", str(path))
    url = worker.wait_ready()                 # its row's url, once /health says ready
    worker.stop()                             # SIGTERM, then the exit code
    launcher.kill_all()                       # in teardown: kills whatever is left
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text

from app.db.engine import sqlalchemy_url

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class WorkerDied(AssertionError):
    """The worker exited, or did not get where a test waited for it to get."""


@dataclass
class WorkerProcess:
    """One `herd worker` subprocess and its log file."""

    process: subprocess.Popen[bytes]
    log_path: Path
    engine: Engine
    url: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _explain(self, what: str) -> WorkerDied:
        return WorkerDied(f"{what} (exit code {self.process.poll()}); log:\n{self.log()[-4000:]}")

    def row(self) -> dict[str, Any] | None:
        """This process's row in `workers`, or None."""
        with self.engine.connect() as conn:
            found = (
                conn.execute(
                    text("SELECT * FROM workers WHERE pid = :pid ORDER BY id DESC LIMIT 1"),
                    {"pid": self.pid},
                )
                .mappings()
                .first()
            )
        return dict(found) if found is not None else None

    def wait_row(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            row = self.row()
            if row is not None:
                self.url = row["url"]
                return row
            if self.process.poll() is not None:
                raise self._explain("the worker exited before registering")
            time.sleep(0.05)
        raise self._explain(f"no worker row after {timeout_s} s")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        """Block until /health answers 200 (status ready); return the worker's url."""
        deadline = time.monotonic() + timeout_s
        url = self.wait_row(timeout_s)["url"]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._explain("the worker exited before it was ready")
            try:
                response = httpx.get(f"{url}/health", timeout=2.0)
                if response.status_code == 200:
                    return str(url)
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise self._explain(f"the worker was not ready after {timeout_s} s")

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise self._explain(f"the worker still runs after {timeout_s} s") from None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; the exit code (a kill after the timeout counts as a failure)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


@dataclass
class WorkerLauncher:
    """Starts workers against one database and HERD_HOME; kill_all() in teardown."""

    db_url: str
    home: Path
    models_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    started: list[WorkerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.engine = create_engine(sqlalchemy_url(self.db_url), pool_pre_ping=True)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HERD_DATABASE_URL=self.db_url,
            HERD_HOME=str(self.home),
            HERD_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        if self.models_dir is not None:
            env["HERD_MODELS_DIR"] = str(self.models_dir)
        env.update(self.extra_env)
        return env

    def start(self, *args: str) -> WorkerProcess:
        """Run `herd worker ARGS...` in the background, output to a log file."""
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"worker-{len(self.started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", *args],
                cwd=REPO_ROOT,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        worker = WorkerProcess(process=process, log_path=log_path, engine=self.engine)
        self.started.append(worker)
        return worker

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill()
        self.engine.dispose()
