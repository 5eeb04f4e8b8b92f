"""The supervisor as a child process of `herd up`."""

from __future__ import annotations

import sys

from app.config import Settings
from app.processes.launcher import LaunchError, Service


def supervisor_service(settings: Settings) -> Service:
    """`herd supervisor` as a Service; healthy once its first reconciliation succeeded."""
    if settings.supervisor_port == 0:
        raise LaunchError(
            "herd up needs a fixed HERD_SUPERVISOR_PORT to check the supervisor's health"
        )
    url = f"http://{settings.supervisor_host}:{settings.supervisor_port}"
    return Service(
        name="supervisor",
        # The port on the command line, so the health URL above is right whatever the
        # child's environment says.
        argv=[
            sys.executable,
            "-m",
            "app.cli",
            "supervisor",
            "--port",
            str(settings.supervisor_port),
        ],
        health_url=f"{url}/health",
        public_url=url,
        log_file=settings.logs_dir / "supervisor.log",
    )
