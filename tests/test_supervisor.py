"""The supervisor end to end: `herd supervisor` as a process, real `herd worker` processes on
the real SmolLM2 demo GGUF, a real PostgreSQL."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import text

from app.config import Settings
from app.control.deployments import DeploymentRequest, Deployments, DeploymentView, ServingSettings
from app.db.database import Database
from app.processes.launcher import LaunchError, ProcessGroup, child_environment, wait_healthy
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model
from app.supervisor import logs
from app.supervisor.errors import SupervisorError
from app.supervisor.run import Listener
from app.supervisor.service import supervisor_service
from tests.conftest import REPO_ROOT, free_port

START_TIMEOUT_S = 60.0
MAX_FAILURES = 3


def wait_until(
    check: Callable[[], object], what: str, timeout_s: float = START_TIMEOUT_S
) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


class SupervisorProcess:
    """`herd supervisor` run as a child, the way `herd up` runs it."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int) -> None:
        self.env = env
        self.log_path = log_path
        self.health_url = f"http://127.0.0.1:{port}/health"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SupervisorProcess:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "supervisor"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._healthy, "the supervisor's /health", 30)
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"supervisor exited early:\n{self.log()}")
        try:
            return httpx.get(self.health_url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout_s)


@pytest.fixture
def herd(
    settings: Settings, database: Database, models_dir: Path, tmp_path: Path
) -> Iterator[Callable[[], SupervisorProcess]]:
    """A factory of supervisors sharing one environment; every process is gone afterwards."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        HERD_DATABASE_URL=str(settings.database_url),
        HERD_HOME=str(settings.home),
        HERD_MODELS_DIR=str(models_dir),
        HERD_NODE_NAME="test-node",
        HERD_SUPERVISOR_PORT=str(port),
        HERD_RESTART_BACKOFF_S="0.2",
        HERD_RESTART_MAX_FAILURES=str(MAX_FAILURES),
        HERD_RESTART_STABLE_S="1",
        HERD_WORKER_SHUTDOWN_GRACE_S="1",
        HERD_WORKER_STOP_TIMEOUT_S="3",
        HERD_LOG_LEVEL="INFO",
    )
    started: list[SupervisorProcess] = []

    def make() -> SupervisorProcess:
        supervisor = SupervisorProcess(env, tmp_path / "supervisor.log", port)
        started.append(supervisor)
        return supervisor.start()

    yield make
    for supervisor in started:
        if supervisor.process is not None and supervisor.process.poll() is None:
            supervisor.stop()
    # Workers left by a supervisor killed with -9 (or by a failing test): stop them too.
    with database.engine.connect() as conn:
        pids = conn.execute(text("SELECT pid FROM worker_processes")).scalars().all()
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()


@pytest.fixture
def deployments(database: Database, models_dir: Path) -> Deployments:
    add_demo_model(ModelStore(database.engine, models_dir))
    return Deployments(database.engine)


DEMO = ServingSettings(model="SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=512)


def ready_workers(deployments: Deployments, deployment_id: int) -> list[int]:
    """pids of the deployment's ready workers."""
    return sorted(w.pid for w in deployments.workers(deployment_id) if w.is_ready and w.pid)


def worker_pids(settings: Settings, deployment_id: int) -> list[int]:
    """pids of this test's `herd worker` processes of a deployment running now.

    Other test sessions may run workers with the same deployment id on this machine; ours
    are the ones logging under this test's HERD_HOME.
    """
    ours = str(logs.deployment_log_dir(settings, deployment_id))
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        argv = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE or "--log-path" not in argv:
            continue
        log_path = argv[argv.index("--log-path") + 1 :][:1]
        if "worker" in argv and log_path and log_path[0].startswith(ours + os.sep):
            found.append(process.pid)
    return sorted(found)


def process_records(database: Database, deployment_id: int) -> list[int]:
    with database.engine.connect() as conn:
        return sorted(
            conn.execute(
                text("SELECT pid FROM worker_processes WHERE deployment_id = :d"),
                {"d": deployment_id},
            ).scalars()
        )


CHAT = {
    "model": "smol",
    "messages": [{"role": "user", "content": "Count to five."}],
    "max_tokens": 8,
    "temperature": 0,
}


def chat(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)


def the_worker(deployments: Deployments, deployment_id: int) -> tuple[int, str]:
    [worker] = [w for w in deployments.workers(deployment_id) if w.is_ready]
    assert worker.pid is not None and worker.url is not None
    return worker.pid, worker.url


def test_deploy_serve_and_recover_from_kill(
    herd: Callable[[], SupervisorProcess], deployments: Deployments, settings: Settings
) -> None:
    supervisor = herd()
    health = httpx.get(supervisor.health_url).json()
    assert (health["status"], health["node"], health["workers"]) == ("ready", "test-node", 0)

    d = deployments.create(DeploymentRequest("smol", DEMO))
    wait_until(lambda: ready_workers(deployments, d.id), "a ready worker")
    pid, url = the_worker(deployments, d.id)
    assert worker_pids(settings, d.id) == [pid]
    assert httpx.get(f"{url}/health").json()["status"] == "ready"

    answer = chat(url)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json={**CHAT, "stream": True},
        timeout=60,
    ) as streamed:
        chunks = [line for line in streamed.iter_lines() if line.startswith("data: {")]
    deltas = [json.loads(c[6:])["choices"][0]["delta"].get("content") for c in chunks]
    assert len([x for x in deltas if x]) >= 2  # tokens arrive one event at a time

    # The worker's output goes to its own log file, which the dashboard shows.
    [view] = deployments.workers(d.id)
    assert view.log_path is not None
    assert Path(view.log_path).parent == logs.deployment_log_dir(settings, d.id)
    wait_until(lambda: logs.tail(settings, view.log_path or ""), "worker log output", 5)

    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: [p for p in ready_workers(deployments, d.id) if p != pid], "a replacement", 60
    )
    new_pid, new_url = the_worker(deployments, d.id)
    assert worker_pids(settings, d.id) == [new_pid] and new_pid != pid
    recovered = deployments.get(d.id)
    assert recovered.state == "active"
    assert recovered.error is None or "SIGKILL" in recovered.error
    assert chat(new_url).status_code == 200
    # Stable for restart_stable_s (1 s here): the failure count starts over.
    wait_until(lambda: deployments.get(d.id).failures == 0, "the failure count reset", 10)

    assert supervisor.stop() == 0
    assert worker_pids(settings, d.id) == []  # a stopping supervisor stops its workers
    assert deployments.workers(d.id) == []


def test_broken_gguf_fails_with_the_reason_and_stops_retrying(
    herd: Callable[[], SupervisorProcess],
    deployments: Deployments,
    database: Database,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
    settings: Settings,
) -> None:
    # A header the store accepts, but no tokenizer merges: llama.cpp refuses to load it.
    ModelStore(database.engine, models_dir).add(tiny_gguf("broken.gguf"))
    d = deployments.create(
        DeploymentRequest("broken", ServingSettings(model="broken.gguf", n_ctx=256))
    )
    herd()

    failed: DeploymentView = wait_until(  # type: ignore[assignment]
        lambda: (v := deployments.get(d.id)).state == "failed" and v, "the deployment to fail"
    )
    assert failed.failures == MAX_FAILURES
    assert failed.error is not None
    assert "exited with code 1" in failed.error
    assert "load" in failed.error.lower(), failed.error  # llama.cpp's reason, via the worker
    # No crash loop: exactly MAX_FAILURES attempts (one log file each), then nothing more.
    time.sleep(2)
    attempts = list(logs.deployment_log_dir(settings, d.id).glob("*.log"))
    assert len(attempts) == MAX_FAILURES
    assert worker_pids(settings, d.id) == [] and deployments.workers(d.id) == []

    # Starting it again is the operator's call; it runs the attempts afresh.
    deployments.start(d.id)
    wait_until(lambda: deployments.get(d.id).state == "failed", "the second give-up")
    assert len(list(logs.deployment_log_dir(settings, d.id).glob("*.log"))) == 2 * MAX_FAILURES


def test_scale_and_supervisor_restart_adopts_workers(
    herd: Callable[[], SupervisorProcess],
    deployments: Deployments,
    database: Database,
    settings: Settings,
) -> None:
    supervisor = herd()
    d = deployments.create(DeploymentRequest("smol", DEMO))
    wait_until(lambda: len(ready_workers(deployments, d.id)) == 1, "one ready worker")

    deployments.scale(d.id, 2)
    # The change is acted on within a second (LISTEN/NOTIFY, not a slow poll).
    wait_until(lambda: len(worker_pids(settings, d.id)) == 2, "a second worker process", 1.0)
    wait_until(lambda: len(ready_workers(deployments, d.id)) == 2, "two ready workers")
    pids = ready_workers(deployments, d.id)
    assert worker_pids(settings, d.id) == pids == process_records(database, d.id)

    # The supervisor dies; its workers keep serving and the next supervisor adopts them.
    supervisor.stop(signal.SIGKILL)
    assert worker_pids(settings, d.id) == pids
    urls = [w.url for w in deployments.workers(d.id)]
    assert len(urls) == 2 and all(urls)
    for url in urls:  # serving, not merely alive, while no supervisor runs
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] is not None
    second = herd()
    time.sleep(1.5)  # several reconciliations
    assert worker_pids(settings, d.id) == pids  # no duplicates started
    assert process_records(database, d.id) == pids
    assert "adopted 2 running worker(s)" in second.log()

    deployments.scale(d.id, 0)
    wait_until(lambda: worker_pids(settings, d.id) == [], "the workers to stop", 15)
    wait_until(lambda: deployments.workers(d.id) == [], "their rows to go", 5)
    assert process_records(database, d.id) == []
    assert second.stop() == 0


def test_rolling_update_keeps_a_ready_replica(
    herd: Callable[[], SupervisorProcess], deployments: Deployments, settings: Settings
) -> None:
    herd()
    d = deployments.create(DeploymentRequest("smol", DEMO))
    wait_until(lambda: ready_workers(deployments, d.id), "a ready worker")
    [old_pid] = ready_workers(deployments, d.id)

    rolled = deployments.roll(d.id, dataclasses.replace(DEMO, n_ctx=1024))
    assert rolled.generation == 2
    # Until the old replica is gone, at least one replica is ready at every moment, and the
    # old one stops only after a new one is ready.
    deadline = time.monotonic() + START_TIMEOUT_S
    while old_pid in worker_pids(settings, d.id):
        workers = deployments.workers(d.id)
        assert any(w.is_ready for w in workers), workers
        assert time.monotonic() < deadline, "the roll did not finish"
        time.sleep(0.05)
    [new] = [w for w in deployments.workers(d.id) if w.pid != old_pid]
    assert new.generation == 2 and new.is_ready
    wait_until(lambda: ready_workers(deployments, d.id) == [new.pid], "only the new worker", 10)

    deployments.stop(d.id)
    wait_until(lambda: worker_pids(settings, d.id) == [], "the stopped deployment's worker", 15)
    deployments.start(d.id)
    wait_until(lambda: ready_workers(deployments, d.id), "a worker after the start")
    deployments.delete(d.id)
    wait_until(lambda: worker_pids(settings, d.id) == [], "the deleted deployment's worker", 15)
    wait_until(lambda: deployments.workers(d.id) == [], "no rows left", 5)


def test_supervisor_service_runs_under_the_launcher(settings: Settings, database: Database) -> None:
    settings = settings.model_copy(update={"supervisor_port": free_port()})
    service = supervisor_service(settings)
    group = ProcessGroup(child_environment(settings, database))
    try:
        running = group.start(service)
        wait_healthy(running, 30)
        assert httpx.get(service.health_url).json()["status"] == "ready"
    finally:
        group.stop_all()
    assert running.process.returncode == 0  # SIGTERM is a clean stop
    assert "supervisor for node" in service.log_file.read_text()

    with pytest.raises(LaunchError, match="HERD_SUPERVISOR_PORT"):
        supervisor_service(settings.model_copy(update={"supervisor_port": 0}))


def test_one_supervisor_per_node_and_database(database: Database) -> None:
    first, second, elsewhere = (Listener(database.url, n) for n in ("n1", "n1", "n2"))
    first.open(wait_s=0)
    try:
        with pytest.raises(SupervisorError, match="another supervisor already runs for node"):
            second.open(wait_s=0)
        elsewhere.open(wait_s=0)  # another machine's supervisor is no conflict
        first.close()
        second.open(wait_s=0)  # the lock goes with the connection
    finally:
        for listener in (first, second, elsewhere):
            listener.close()
