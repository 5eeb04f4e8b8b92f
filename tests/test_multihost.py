"""Herd on several hosts, for real: Linux network namespaces joined by veth links to a bridge
stand in for machines. PostgreSQL (Debian's, as a non-root user) runs on one, a supervisor
with its workers on each of two more, the gateway on a fourth. Requests cross hosts; then one
worker host's link is cut and the gateway must route around it, its replica must be placed
on the other host, and the request log must hold a row per request.

Needs root and iproute2 (CI has both); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from app.db import migrate
from app.db.engine import sqlalchemy_url
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model
from tests.conftest import REPO_ROOT

PG_USER = "postgres"
SUBNET = "10.77.0"
HOSTS = {"db": f"{SUBNET}.1", "gw": f"{SUBNET}.2", "w1": f"{SUBNET}.11", "w2": f"{SUBNET}.12"}
GATEWAY_PORT = 8000
# Short timeouts so the test sees failover in seconds; the defaults are a few seconds more.
TIMEOUT_S = 4

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 (`ip netns`) to build network namespaces, as CI has",
)


def pg_bin() -> Path:
    """Debian's PostgreSQL (package postgresql; .ci/run installs it), newest major version."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3])
    )
    if not found:
        raise AssertionError("Debian's PostgreSQL is not installed: apt-get install postgresql")
    return found[-1].parent


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def wait_until(check: Callable[[], object], what: str, timeout_s: float) -> float:
    """Seconds it took for check() to turn true."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


@dataclass
class Network:
    """Namespaces named herdt-<pid>-<host> on one bridge in a hub namespace of their own."""

    prefix: str = field(default_factory=lambda: f"herdt-{os.getpid()}-")
    created: list[str] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return self.prefix + host

    def build(self) -> None:
        hub = self.ns("hub")
        for name in [hub, *(self.ns(h) for h in HOSTS)]:
            run("ip", "netns", "add", name)
            self.created.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", hub, "link", "set", "br0", "up")
        for host, address in HOSTS.items():
            # The hub end is the host's "switch port"; the host end is its eth0.
            run("ip", "-n", hub, "link", "add", f"p-{host}", "type", "veth",
                "peer", "name", "eth0", "netns", self.ns(host))  # fmt: skip
            run("ip", "-n", hub, "link", "set", f"p-{host}", "master", "br0", "up")
            run("ip", "-n", self.ns(host), "addr", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", self.ns(host), "link", "set", "eth0", "up")
            # A default route, as hosts have: a worker bound to 0.0.0.0 advertises eth0's address.
            run("ip", "-n", self.ns(host), "route", "add", "default", "dev", "eth0")

    def cable(self, host: str, up: bool) -> None:
        """Plug or pull host's cable at the switch."""
        run("ip", "-n", self.ns("hub"), "link", "set", f"p-{host}", "up" if up else "down")

    def popen(
        self, host: str, argv: list[str], env: dict[str, str], log: Path, user: str | None = None
    ) -> subprocess.Popen[bytes]:
        prefix = ["ip", "netns", "exec", self.ns(host)]
        if user:
            prefix += ["runuser", "-u", user, "--"]
        with log.open("ab") as out:
            return subprocess.Popen(
                prefix + argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def python(self, host: str, code: str, *args: str, timeout_s: float = 180) -> object:
        """Run code in host's namespace; its last stdout line, as JSON."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns(host), sys.executable, "-c", code, *args],
            capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"client in {host} failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def teardown(self) -> None:
        # Plug everything back first, so processes can say goodbye to the database.
        for host in HOSTS:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.cable(host, True)
        for name in reversed(self.created):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


# Sends N chat calls one after another through the gateway; prints their HTTP statuses.
CLIENT = """
import json, sys, httpx
url, n = sys.argv[1], int(sys.argv[2])
statuses = []
with httpx.Client(timeout=120, trust_env=False) as client:
    for i in range(n):
        r = client.post(url + "/v1/chat/completions", json={
            "model": "smol", "max_tokens": 4,
            "messages": [{"role": "user", "content": f"Say hello {i}"}]})
        statuses.append(r.status_code)
print(json.dumps(statuses))
"""
HEALTH = """
import json, sys, httpx
print(json.dumps(httpx.get(sys.argv[1] + "/health", timeout=5, trust_env=False).json()))
"""
# Polls the gateway's /health until it routes to exactly N workers; prints the seconds taken.
UNTIL_LIVE = """
import json, sys, time, httpx
url, n, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
started = time.monotonic()
while time.monotonic() - started < limit:
    if httpx.get(url + "/health", timeout=5, trust_env=False).json()["live_workers"] == n:
        print(json.dumps(time.monotonic() - started))
        break
    time.sleep(0.1)
else:
    print(json.dumps(None))
"""


@dataclass
class Cluster:
    net: Network
    tmp: Path
    engine: Engine
    env: dict[str, str]
    model_id: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, host: str, argv: list[str], **extra: str) -> subprocess.Popen[bytes]:
        env = {**self.env, "HERD_HOME": str(self.tmp / f"{host}-home"), **extra}
        process = self.net.popen(host, argv, env, self.tmp / f"{host}.log")
        self.processes.append(process)
        return process

    def deploy(self, alias: str, replicas: int) -> None:
        with self.engine.connect() as conn:
            conn.execute(
                text(
                    "INSERT INTO deployments (alias, model_id, replicas, n_ctx, threads) "
                    "VALUES (:alias, :m, :replicas, 512, 1)"
                ),
                {"alias": alias, "m": self.model_id, "replicas": replicas},
            )

    def log(self, host: str) -> str:
        path = self.tmp / f"{host}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def scalar(self, sql: str, **params: object) -> object:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def ready_workers(self) -> list[str]:
        """URLs of ready workers with a fresh heartbeat."""
        with self.engine.connect() as conn:
            return sorted(
                conn.execute(
                    text(
                        "SELECT url FROM workers WHERE state = 'ready' "
                        "AND heartbeat_at > now() - make_interval(secs => :s)"
                    ),
                    {"s": TIMEOUT_S},
                ).scalars()
            )

    def calls(self, n: int) -> list[int]:
        statuses = self.net.python("gw", CLIENT, f"http://{HOSTS['gw']}:{GATEWAY_PORT}", str(n))
        assert isinstance(statuses, list)
        return statuses

    def seconds_until_live(self, n: int, limit_s: float) -> float | None:
        url = f"http://{HOSTS['gw']}:{GATEWAY_PORT}"
        taken = self.net.python("gw", UNTIL_LIVE, url, str(n), str(limit_s))
        return None if taken is None else float(taken)  # type: ignore[arg-type]

    def live_at_gateway(self) -> int:
        health = self.net.python("gw", HEALTH, f"http://{HOSTS['gw']}:{GATEWAY_PORT}", timeout_s=30)
        assert isinstance(health, dict)
        return int(health["live_workers"])


def open_to(path: Path, user: str) -> None:
    """Let user reach path: traverse (only x) on its parents, own the folder itself."""
    info = pwd.getpwnam(user)
    path.mkdir(parents=True, exist_ok=True)
    for parent in path.parents:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o001)
    os.chown(path, info.pw_uid, info.pw_gid)
    path.chmod(0o700)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    net = Network()
    engine: Engine | None = None
    cluster: Cluster | None = None
    postgres: subprocess.Popen[bytes] | None = None
    try:
        net.build()
        bin_dir = pg_bin()
        pgdir = tmp_path / "pg"
        open_to(pgdir, PG_USER)
        run("runuser", "-u", PG_USER, "--", str(bin_dir / "initdb"), "-D", str(pgdir / "data"),
            "-U", "herd", "-A", "trust", "--no-sync")  # fmt: skip
        # Trust is for this closed test network only (no host outside it can reach it).
        with (pgdir / "data" / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        postgres = net.popen(
            "db",
            [str(bin_dir / "postgres"), "-D", str(pgdir / "data"), "-k", str(pgdir),
             "-c", f"listen_addresses={HOSTS['db']}", "-c", "fsync=off"],
            dict(os.environ), tmp_path / "db.log", user=PG_USER,
        )  # fmt: skip
        # This test process (outside every namespace) reaches it on its Unix socket.
        local_url = f"postgresql://herd@/postgres?host={pgdir}"
        wait_until(lambda: (pgdir / ".s.PGSQL.5432").exists(), "PostgreSQL to start", 60)
        engine = create_engine(sqlalchemy_url(local_url), isolation_level="AUTOCOMMIT")
        wait_until(lambda: _answers(engine), "PostgreSQL to answer", 60)
        migrate.upgrade(local_url)
        models = tmp_path / "models_store"
        demo = add_demo_model(ModelStore(engine, models))
        env = {
            **os.environ,
            "HERD_DATABASE_URL": f"postgresql://herd@{HOSTS['db']}:5432/postgres",
            "HERD_MODELS_DIR": str(models),
            "HERD_NODE_TIMEOUT_S": str(TIMEOUT_S),
            "HERD_WORKER_LIVE_S": str(TIMEOUT_S),
            "HERD_GATEWAY_CONNECT_TIMEOUT_S": "1",
            "HERD_GATEWAY_REFRESH_S": "0.2",
            "HERD_LOG_FLUSH_MS": "100",
            "HERD_WORKER_SHUTDOWN_GRACE_S": "0",
            "HERD_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        cluster = Cluster(net, tmp_path, engine, env, demo.id)
        yield cluster
    finally:
        if cluster is not None:
            for host in HOSTS:  # cables back in: stopping processes reach the database
                with contextlib.suppress(AssertionError):
                    net.cable(host, True)
            for process in cluster.processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in cluster.processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        if engine is not None:
            engine.dispose()
        if postgres is not None and postgres.poll() is None:
            postgres.send_signal(signal.SIGINT)  # fast shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                postgres.wait(timeout=20)
        net.teardown()


def _answers(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


def test_gateway_routes_across_hosts_and_around_a_cut_one(cluster: Cluster) -> None:
    herd = [sys.executable, "-m", "app.cli"]
    # w1's workers bind to its address; w2's to 0.0.0.0 and advertise its primary address.
    for host, bind in (("w1", HOSTS["w1"]), ("w2", "0.0.0.0")):
        cluster.start(host, [*herd, "supervisor"], HERD_NODE_NAME=host,
                      HERD_NODE_LABELS=f"host={host}", HERD_WORKER_HOST=bind)  # fmt: skip
    cluster.start("gw", [*herd, "gateway", "--host", HOSTS["gw"], "--port", str(GATEWAY_PORT)])

    w1, w2 = (f"http://{HOSTS[h]}:" for h in ("w1", "w2"))
    try:
        # Placement spreads replicas over the nodes alive when it places them (replicas never
        # move to a node that joins later), so both nodes are up before the deployment.
        wait_until(lambda: cluster.scalar("SELECT count(*) FROM nodes") == 2, "two nodes", 60)
        cluster.deploy("smol", 2)
        # One replica per host: placement spreads a deployment over the matching nodes.
        wait_until(lambda: len(cluster.ready_workers()) == 2, "two ready workers", 120)
        urls = cluster.ready_workers()
        assert [u.startswith(w1) for u in urls].count(True) == 1
        assert [u.startswith(w2) for u in urls].count(True) == 1
        wait_until(lambda: cluster.live_at_gateway() == 2, "the gateway to see both", 30)

        assert cluster.calls(6) == [200] * 6
        served_by = cluster.scalar("SELECT count(DISTINCT worker_id) FROM requests")
        assert served_by == 2, "calls should have gone to workers on both hosts"

        cluster.net.cable("w2", False)
        cut_at = time.monotonic()
        # Calls right after the cut may go to w2 on a kept-alive connection: the gateway's
        # dead-peer detection (not the 300 s first-token timeout) ends that attempt, and the
        # call is retried on w1 since nothing reached the client yet.
        assert cluster.calls(2) == [200] * 2
        assert time.monotonic() - cut_at < 3 * TIMEOUT_S + 10, "a call hung on the cut host"
        # Routed around once w2's worker misses heartbeats (before w1's new replica is up).
        assert cluster.seconds_until_live(1, 15) is not None, "w2's worker still routed to"
        routed_around_s = time.monotonic() - cut_at
        assert routed_around_s < 2 * TIMEOUT_S + 2
        assert cluster.calls(3) == [200] * 3
        # w2's replica moves to w1, whose supervisor starts it.
        wait_until(
            lambda: cluster.scalar("SELECT count(*) FROM placements WHERE node = 'w1'") == 2,
            "w2's replica to be placed on w1",
            15,
        )
        replaced_s = time.monotonic() - cut_at
        wait_until(
            lambda: sum(u.startswith(w1) for u in cluster.ready_workers()) == 2,
            "a second ready worker on w1",
            120,
        )
        print(
            f"cut w2: routed around after {routed_around_s:.1f} s, replica re-placed after "
            f"{replaced_s:.1f} s, ready on w1 after {time.monotonic() - cut_at:.1f} s"
        )
        assert cluster.calls(4) == [200] * 4
        # Every call left exactly one row, whichever host served it.
        wait_until(lambda: cluster.scalar("SELECT count(*) FROM requests") == 15,
                   "15 request rows", 15)  # fmt: skip
        assert cluster.scalar("SELECT count(*) FROM requests WHERE status <> 'ok'") == 0
    except AssertionError as exc:
        logs = "\n".join(f"--- {h}\n{cluster.log(h)}" for h in ("w1", "w2", "gw"))
        raise AssertionError(f"{exc}\n{logs}") from None
