"""`herd supervisor`: the loop that keeps this node's workers matching the deployments table.

It holds a PostgreSQL advisory lock for its node (so two supervisors never both start
replicas) on the same connection that LISTENs for deployment changes, reconciles on every
NOTIFY and at least every settings.supervisor_poll_s, and serves /health for `herd up`.
Each pass also heartbeats its node and takes part in placement (app/supervisor/placement.py).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from urllib.parse import urlsplit

import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.control.audit import Via
from app.db.database import Database
from app.processes.launcher import child_environment
from app.rollouts.actions import Rollouts
from app.supervisor.errors import SupervisorError
from app.supervisor.health import HealthServer, SupervisorStatus
from app.supervisor.placement import lock_key
from app.supervisor.reconcile import Supervisor
from app.supervisor.records import SupervisorRecords

log = logging.getLogger(__name__)

CHANNEL = "herd_deployments"
LOCK_WAIT_S = 15.0


def _libpq_url(url: str) -> str:
    """The URL as libpq takes it (SQLAlchemy's '+psycopg' driver suffix removed)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _lock_key(node: str) -> int:
    """The advisory lock key of a node's supervisor."""
    return lock_key(f"herd-supervisor:{node}")


class Listener:
    """The node lock and the LISTEN connection, reopened when the database comes back."""

    def __init__(self, url: str, node: str) -> None:
        self.url = _libpq_url(url)
        self.node = node
        self.conn: psycopg.Connection[tuple[object, ...]] | None = None

    def open(self, wait_s: float) -> None:
        conn = psycopg.connect(self.url, autocommit=True)
        deadline = time.monotonic() + wait_s
        while True:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s)", (_lock_key(self.node),)
            ).fetchone()
            if row is not None and row[0]:
                break
            if time.monotonic() > deadline:
                conn.close()
                raise SupervisorError(
                    f"another supervisor already runs for node {self.node!r} on this database; "
                    "stop it first, or give this one another HERD_NODE_NAME"
                )
            time.sleep(0.5)
        conn.execute(f"LISTEN {CHANNEL}")
        self.conn = conn

    def wait(self, timeout_s: float) -> None:
        """Return after a deployment change is notified, or after timeout_s."""
        if self.conn is None or self.conn.closed:
            self.conn = None
            try:
                # Once the node's lock is ours again we may act; if another supervisor took
                # it while the database was away, this one must stop (SupervisorError).
                self.open(wait_s=0)
            except psycopg.OperationalError:
                time.sleep(timeout_s)
                return
        assert self.conn is not None
        try:
            for _ in self.conn.notifies(timeout=timeout_s, stop_after=1):
                pass
            # Several changes may come at once; one reconciliation covers them all.
            for _ in self.conn.notifies(timeout=0.0):
                pass
        except psycopg.OperationalError as exc:
            log.warning("lost the LISTEN connection: %s", exc)
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


def run_supervisor(
    settings: Settings,
    database: Database,
    *,
    keep_workers: bool = False,
    stop: threading.Event | None = None,
) -> int:
    """Reconcile until SIGTERM/SIGINT (or stop is set); then stop the workers unless
    keep_workers, in which case the next supervisor adopts them."""
    stop = stop or threading.Event()
    if settings.advertise_url and urlsplit(settings.advertise_url).port is not None:
        # Its workers inherit it, and each listens on a port of its own.
        raise SupervisorError(
            f"HERD_ADVERTISE_URL={settings.advertise_url} names a port, but every worker this "
            "supervisor starts has its own: give http://host only (the port is added)"
        )
    records = SupervisorRecords(database.engine, settings.node_name)
    supervisor = Supervisor(settings, records, child_environment(settings, database))
    status = SupervisorStatus(node=settings.node_name, poll_s=settings.supervisor_poll_s)
    listener = Listener(database.url, settings.node_name)
    rollouts = Rollouts(database.engine, settings, Via.SYSTEM, "canary guard", settings.node_name)
    listener.open(wait_s=LOCK_WAIT_S)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = []
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous.append((signum, signal.signal(signum, request_stop)))
    health = HealthServer(settings.supervisor_host, settings.supervisor_port, status)
    try:
        health.start()
        adopted = supervisor.adopt_running()
        log.info("supervisor for node %r: health at %s; adopted %d running worker(s)",
                 settings.node_name, health.url, adopted)  # fmt: skip
        while not stop.is_set():
            try:
                supervisor.reconcile()
                status.reconciled(len(supervisor.handles))
            except SQLAlchemyError as exc:
                # Workers keep running while the database is away; try again next tick.
                status.failed(str(exc))
                log.warning("reconciliation failed, retrying: %s", exc)
            except Exception as exc:
                # A bug or a full disk must not take every worker down with the supervisor;
                # /health turns 503 if it persists.
                status.failed(repr(exc))
                log.exception("reconciliation failed, retrying")
            try:
                # Canary guard and the end of promotions' grace periods (app/rollouts/actions.py).
                rollouts.tick()
            except Exception:
                log.exception("rollout guard failed, retrying")
            listener.wait(settings.supervisor_poll_s)
    finally:
        health.stop()
        if keep_workers:
            log.info(
                "leaving %d worker(s) running for the next supervisor", len(supervisor.handles)
            )
        else:
            try:
                # Other nodes take this node's replicas over now, not after its timeout.
                supervisor.placer.leave()
            except SQLAlchemyError as exc:
                log.warning("could not hand this node's replicas over: %s", exc)
            log.info("stopping %d worker(s)", len(supervisor.handles))
            supervisor.stop_all()
        listener.close()
        for signum, handler in previous:
            signal.signal(signum, handler)
    return 0
