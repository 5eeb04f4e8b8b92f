"""Start `herd jobs run ID` detached from the caller, so the job outlives a page or command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.config import Settings

# The intermediate process starts the job in a new session and exits at once, so the job is
# nobody's child: it survives its starter and leaves no zombie behind in a long-lived
# dashboard process.
_DETACH = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,\n"
    "                 start_new_session=True, close_fds=True)\n"
)


def job_env(settings: Settings) -> dict[str, str]:
    """The environment that gives the job process the same settings as its starter."""
    env = dict(os.environ)
    env["HERD_HOME"] = str(settings.home_dir)
    env["HERD_MODELS_DIR"] = str(settings.models_path)
    env["HERD_JOB_HEARTBEAT_S"] = str(settings.job_heartbeat_s)
    env["HERD_JOB_STALE_S"] = str(settings.job_stale_s)
    env["HERD_LOG_LEVEL"] = settings.log_level
    if settings.database_url:
        env["HERD_DATABASE_URL"] = settings.database_url
    return env


def job_log_path(settings: Settings, job_id: int) -> Path:
    """Where a job process's own output goes."""
    return settings.logs_dir / "jobs" / f"{job_id}.log"


def spawn_job(settings: Settings, job_id: int) -> Path:
    """Start the job's process detached; its log file's path."""
    log_path = job_log_path(settings, job_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "app.cli", "jobs", "run", str(job_id)]
    subprocess.run(
        [sys.executable, "-c", _DETACH, str(log_path), *argv],
        env=job_env(settings),
        check=True,
        timeout=60,
    )
    return log_path
