"""`herd up` and friends: prepare the database and store, run Herd's processes, stop them."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from app.config import Settings
from app.control.accounts import Accounts
from app.control.audit import Actor, Via
from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
from app.db import migrate
from app.db.database import Database
from app.db.embedded import EmbeddedPostgres
from app.db.process_restarts import ProcessRestarts, describe_exit
from app.processes.restarts import RestartBook, Restarter, RestartPolicy, Watched
from app.store.catalog import ModelStore, ProgressCallback, ScanReport
from app.store.demo import add_demo_model

logger = logging.getLogger(__name__)

DASHBOARD_ENTRY = Path(__file__).resolve().parents[2] / "dashboard.py"
# Long enough for the supervisor to stop its workers gracefully (their grace plus its own).
STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 60.0
# How often `herd up` looks for a child (or the embedded server) that has exited.
WATCH_INTERVAL_S = 0.2
# `herd up --demo` serves the demo model under this alias (the README's curl calls it).
DEMO_ALIAS = "demo"
# Loading the demo model takes seconds; a busy 2-core machine may need a minute or more.
DEMO_READY_TIMEOUT_S = 300.0

Echo = Callable[[str], None]


class LaunchError(RuntimeError):
    """A process herd starts did not come up; the message says why and where its log is."""


@dataclass
class Service:
    """A child process herd runs: its command, where it logs, how to tell it is up."""

    name: str
    argv: list[str]
    health_url: str
    public_url: str
    log_file: Path


@dataclass
class Running:
    service: Service
    process: subprocess.Popen[bytes]


@dataclass
class Preparation:
    """What preparing the database found or did."""

    scan: ScanReport
    admin_password: str | None
    demo_model: str | None = None
    notes: list[str] = field(default_factory=list)


def prepare(
    settings: Settings,
    database: Database,
    *,
    demo: bool = False,
    progress: ProgressCallback | None = None,
) -> Preparation:
    """Upgrade the schema, scan the store, add the demo model, create the first operator."""
    migrate.upgrade(database.url)
    store = ModelStore(database.engine, settings.models_path)
    demo_name = add_demo_model(store, progress).name if demo else None
    report = store.scan(progress)
    # Typed by whoever runs `herd up` on this machine: recorded as that command.
    password = Accounts(database.engine).ensure_admin(Actor.local(None, Via.CLI, "herd up"))
    return Preparation(scan=report, admin_password=password, demo_model=demo_name)


def deploy_demo(settings: Settings, database: Database, model_name: str) -> bool:
    """Deploy the demo model as DEMO_ALIAS, once: only while no deployment exists at all, so
    an operator's own choices (even deleting the demo) are never undone. True if deployed."""
    deployments = Deployments(database.engine, settings.worker_live_s)
    if deployments.all():
        return False
    # parallel 0: each worker takes as many slots (up to 4) as its host's memory holds.
    deployments.create(DeploymentRequest(DEMO_ALIAS, ServingSettings(model=model_name)))
    return True


def wait_alias_served(
    gateway_url: str,
    alias: str,
    api_key: str | None = None,
    timeout_s: float = DEMO_READY_TIMEOUT_S,
) -> bool:
    """Wait until the gateway at gateway_url (ending in /v1) routes alias to a live worker.
    False on timeout, or when the gateway refuses the key (it then cannot be asked)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(f"{gateway_url}/models", headers=headers, timeout=2.0)
        except httpx.HTTPError:
            reply = None
        if reply is not None and reply.status_code in (401, 403):
            return False
        if reply is not None and reply.status_code == 200:
            served = {m["id"]: m.get("live_workers", 0) for m in reply.json().get("data", [])}
            if served.get(alias, 0) > 0:
                return True
        time.sleep(0.5)
    return False


def dashboard_service(settings: Settings, port: int | None = None) -> Service:
    """The Streamlit dashboard as a child process."""
    if not DASHBOARD_ENTRY.exists():
        raise LaunchError(
            f"dashboard entry script not found at {DASHBOARD_ENTRY}; install Herd from a "
            "source checkout with `pip install -e .`"
        )
    port = port or settings.dashboard_port
    host = settings.dashboard_host
    argv = [
        sys.executable, "-m", "streamlit", "run", str(DASHBOARD_ENTRY),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
    ]  # fmt: skip
    return Service(
        name="dashboard",
        argv=argv,
        health_url=f"http://{host}:{port}/_stcore/health",
        public_url=f"http://{host}:{port}",
        log_file=settings.logs_dir / "dashboard.log",
    )


def child_environment(settings: Settings, database: Database) -> dict[str, str]:
    """Environment for children: the resolved database, so they attach and start nothing."""
    env = dict(os.environ)
    env["HERD_DATABASE_URL"] = database.url
    env["HERD_HOME"] = str(settings.home_dir)
    env["HERD_MODELS_DIR"] = str(settings.models_path)
    return env


def wait_healthy(running: Running, timeout_s: float = START_TIMEOUT_S) -> None:
    """Block until the service answers its health URL; raise if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = running.process.poll()
        if code is not None:
            raise LaunchError(
                f"{running.service.name} exited with code {code} while starting; "
                f"see {running.service.log_file}"
            )
        try:
            if httpx.get(running.service.health_url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise LaunchError(
        f"{running.service.name} did not answer {running.service.health_url} within "
        f"{timeout_s:.0f} s; see {running.service.log_file}"
    )


class ProcessGroup:
    """The children one herd command started; stopped together, gracefully then by force."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.running: list[Running] = []

    def start(self, service: Service) -> Running:
        running = Running(service, self._spawn(service))
        self.running.append(running)
        return running

    def restart(self, running: Running, note: str) -> None:
        """Start running's service again in its place (it has exited); note goes to its log
        first, so the log shows where one run ends and the next begins."""
        running.service.log_file.parent.mkdir(parents=True, exist_ok=True)
        with running.service.log_file.open("a") as log:
            log.write(f"--- herd up: {note}\n")
        running.process = self._spawn(running.service)

    def _spawn(self, service: Service) -> subprocess.Popen[bytes]:
        service.log_file.parent.mkdir(parents=True, exist_ok=True)
        with service.log_file.open("ab") as log:
            # Own session: a terminal's Ctrl-C reaches herd only, which then stops children
            # in order, instead of every process racing to exit at once.
            process = subprocess.Popen(
                service.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return process

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        for running in reversed(self.running):
            if running.process.poll() is None:
                running.process.terminate()
        deadline = time.monotonic() + timeout_s
        for running in reversed(self.running):
            try:
                running.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()
        self.running.clear()


class _Stop(Exception):
    """Raised in the main thread by SIGTERM, so it unwinds like Ctrl-C."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


class ChildWatch:
    """A child of the ProcessGroup, as the Restarter sees it."""

    def __init__(self, group: ProcessGroup, running: Running) -> None:
        self.group = group
        self.child = running
        self.name = running.service.name
        self.log_file = running.service.log_file

    def running(self) -> bool:
        return self.child.process.poll() is None

    def exit_code(self) -> int | None:
        return self.child.process.returncode

    def start_again(self, exit_code: int | None) -> None:
        self.group.restart(self.child, f"{self.name} {describe_exit(exit_code)}; starting it again")


class EmbeddedWatch:
    """The embedded PostgreSQL, as the Restarter sees it: it is not herd up's child (pg_ctl
    starts it detached), so it is seen through its pid file; herd up's handle restarts it."""

    name = "postgres"

    def __init__(self, embedded: EmbeddedPostgres, url: str, echo: Echo) -> None:
        self.embedded = embedded
        self.url = url
        self.echo = echo
        self.log_file = embedded.pgdata / "log"

    def running(self) -> bool:
        return self.embedded.alive()

    def exit_code(self) -> int | None:
        return None  # not our child: its status is its parent's to read

    def start_again(self, exit_code: int | None) -> None:
        url = self.embedded.restart()
        if url != self.url:
            self.echo(
                f"the embedded PostgreSQL came back at {url}, not {self.url}; restart herd up "
                "so that every process uses it"
            )


def serve(
    settings: Settings,
    database: Database,
    services: list[Service],
    echo: Echo,
    on_ready: Callable[[], None] | None = None,
    *,
    keep_database: bool = False,
    policy: RestartPolicy | None = None,
) -> int:
    """Run services until Ctrl-C or SIGTERM (exit 0). One that exits once all are up is
    started again (app/processes/restarts.py), and so is the embedded PostgreSQL with keep_database;
    restarts are counted in the database. One that fails to come up at first is an error
    (exit 1): a port in use or a bad setting would only fail again."""
    group = ProcessGroup(child_environment(settings, database))
    book: RestartBook | None = None
    watcher: _Watcher | None = None
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        watched: list[Watched] = []
        for service in services:
            running = group.start(service)
            wait_healthy(running)
            watched.append(ChildWatch(group, running))
        if keep_database and database.embedded is not None:
            watched.append(EmbeddedWatch(database.embedded, database.url, echo))
        book = RestartBook(ProcessRestarts(database.engine), settings.node_name)
        watcher = _Watcher(Restarter(watched, echo, book, policy))
        if on_ready is not None:
            on_ready()  # may wait minutes (the demo model loading): the watcher runs already
        while True:
            time.sleep(1.0)
    except (KeyboardInterrupt, _Stop):
        echo("stopping herd ...")
        return 0
    finally:
        if watcher is not None:
            watcher.stop()
        group.stop_all()
        if book is not None:
            book.close()
        signal.signal(signal.SIGTERM, previous)


class _Watcher:
    """Runs a Restarter's ticks in a thread, so the main thread stays free for on_ready and
    for Ctrl-C / SIGTERM (which Python delivers to the main thread only)."""

    def __init__(self, restarter: Restarter) -> None:
        self.restarter = restarter
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="herd-up-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                self.restarter.tick()
            except Exception:
                logger.exception("watching herd's processes")

    def stop(self) -> None:
        """Stop watching, after the tick under way (a restart may take seconds)."""
        self._stop.set()
        self._thread.join(STOP_TIMEOUT_S)
