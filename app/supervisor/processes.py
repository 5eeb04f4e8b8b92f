"""Worker processes on this machine: start one, adopt one found running, stop one."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from app.supervisor.records import DesiredDeployment

log = logging.getLogger(__name__)


def worker_argv(deployment: DesiredDeployment, host: str, log_path: Path) -> list[str]:
    """The `herd worker` command line for one replica of deployment."""
    argv = [
        sys.executable, "-m", "app.cli", "worker",
        "--model", deployment.model_path,
        "--host", host,
        "--port", "0",
        "--alias", deployment.alias,
        "--deployment-id", str(deployment.id),
        "--log-path", str(log_path),
    ]  # fmt: skip
    return argv + deployment.worker_flags()


def is_worker_of(process: psutil.Process, deployment_id: int) -> bool:
    """Whether a running process is `herd worker ... --deployment-id deployment_id`.

    Guards adoption against a recycled pid now used by some unrelated process.
    """
    try:
        argv = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    try:
        at = argv.index("--deployment-id")
    except ValueError:
        return False
    return "worker" in argv and argv[at + 1 : at + 2] == [str(deployment_id)]


@dataclass
class WorkerHandle:
    """A worker process this supervisor runs, started here or adopted after a restart."""

    record_id: int
    deployment_id: int
    generation: int
    pid: int
    log_path: Path
    # Our child: poll() reaps it and gives its exit code. Adopted processes are not our
    # children; psutil watches them and their exit code is unknown.
    popen: subprocess.Popen[bytes] | None = None
    process: psutil.Process | None = None
    started_monotonic: float = field(default_factory=time.monotonic)
    stop_deadline: float | None = None
    kill_reason: str | None = None
    returncode: int | None = None

    @property
    def stopping(self) -> bool:
        return self.stop_deadline is not None

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    def exited(self) -> bool:
        """Whether the process has ended (reaping it when it is our child)."""
        if self.popen is not None:
            code = self.popen.poll()
            if code is None:
                return False
            self.returncode = code
            return True
        if self.process is None:
            return True
        try:
            return not self.process.is_running() or self.process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def request_stop(self, timeout_s: float) -> None:
        """SIGTERM now; the supervisor kills it if it is still there after timeout_s."""
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + timeout_s
        self.signal(signal.SIGTERM)

    def kill(self, reason: str | None = None) -> None:
        if reason and self.kill_reason is None:
            self.kill_reason = reason
        self.signal(signal.SIGKILL)

    def overdue(self) -> bool:
        return self.stop_deadline is not None and time.monotonic() > self.stop_deadline

    def describe_exit(self) -> str:
        if self.kill_reason:
            return self.kill_reason
        if self.returncode is None:
            return "exited"
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"was killed by {name}"
        return f"exited with code {self.returncode}"


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a worker with its output appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        # Own session: Ctrl-C in the supervisor's terminal reaches the supervisor alone,
        # which then stops workers in order (or leaves them running for adoption).
        return subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def adopt(
    record_id: int, deployment_id: int, generation: int, pid: int, log_path: str
) -> WorkerHandle | None:
    """A handle on a worker a previous supervisor started, if it still runs."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    if not is_worker_of(process, deployment_id):
        return None
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        # Age from the process itself, so a restart does not reset stability tracking.
        age_s = max(0.0, time.time() - process.create_time())
    except psutil.NoSuchProcess:
        return None
    return WorkerHandle(
        record_id=record_id,
        deployment_id=deployment_id,
        generation=generation,
        pid=pid,
        log_path=Path(log_path),
        process=process,
        started_monotonic=time.monotonic() - age_s,
    )


def wait_all(handles: list[WorkerHandle], timeout_s: float) -> None:
    """SIGTERM every handle, wait up to timeout_s for all, then SIGKILL the rest."""
    for handle in handles:
        handle.request_stop(timeout_s)
    deadline = time.monotonic() + timeout_s
    pending = list(handles)
    while pending and time.monotonic() < deadline:
        pending = [h for h in pending if not h.exited()]
        if pending:
            time.sleep(0.05)
    for handle in pending:
        log.warning("worker pid %s did not stop within %.0f s; killing it", handle.pid, timeout_s)
        handle.kill()
        if handle.popen is not None:
            handle.popen.wait()
