"""One Settings object for every herd process, read from HERD_* environment variables."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Herd's configuration. Built once by whoever runs (CLI, dashboard) and passed down."""

    model_config = SettingsConfigDict(env_prefix="HERD_", extra="ignore")

    home: Path = Field(
        default=Path(".herd"),
        description="Folder for Herd's own data: the embedded PostgreSQL, logs, spools.",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "Any postgresql:// URL. When set, Herd uses that server and starts none; "
            "when unset, Herd runs an embedded PostgreSQL under HERD_HOME."
        ),
    )
    models_dir: Path = Field(
        default=Path("models_store"),
        description="Folder scanned recursively for .gguf files (the model store).",
    )
    dashboard_host: str = Field(
        default="127.0.0.1",
        description="Address the Streamlit dashboard binds to; binding elsewhere is explicit.",
    )
    dashboard_port: int = Field(default=8501, ge=1, le=65535, description="Dashboard port.")
    log_level: str = Field(default="INFO", description="Python logging level for herd processes.")
    worker_heartbeat_s: float = Field(
        default=1.0,
        gt=0,
        le=2.0,
        description="Seconds between a worker's heartbeats to the `workers` table (at most 2).",
    )
    worker_shutdown_grace_s: float = Field(
        default=5.0,
        ge=0,
        description=(
            "On SIGTERM, seconds a worker lets running requests finish before it cancels them."
        ),
    )
    # The supervisor: deployments -> worker processes on this machine.
    node_name: str = Field(
        default_factory=socket.gethostname,
        description=(
            "Name of this machine for the supervisor; a deployment pinned to a node runs only "
            "there. Default: the host name."
        ),
    )
    supervisor_host: str = Field(
        default="127.0.0.1", description="Address of the supervisor's /health endpoint."
    )
    supervisor_port: int = Field(
        default=8510, ge=0, le=65535, description="Port of the supervisor's /health endpoint."
    )
    supervisor_poll_s: float = Field(
        default=0.5,
        gt=0,
        le=1.0,
        description="Longest wait between reconciliations when no change is notified.",
    )
    worker_host: str = Field(
        default="127.0.0.1", description="Address the workers the supervisor starts bind to."
    )
    worker_stop_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description=(
            "Seconds a worker has, beyond worker_shutdown_grace_s, to exit after SIGTERM "
            "before the supervisor kills it."
        ),
    )
    restart_backoff_s: float = Field(
        default=1.0, gt=0, description="Delay before restarting a crashed worker the first time."
    )
    restart_backoff_max_s: float = Field(
        default=60.0, gt=0, description="Longest delay between restarts (the backoff doubles)."
    )
    restart_max_failures: int = Field(
        default=5,
        ge=1,
        description="Consecutive worker failures after which a deployment is marked failed.",
    )
    restart_stable_s: float = Field(
        default=30.0,
        ge=0,
        description="A replica ready this long resets its deployment's failure count.",
    )
    worker_heartbeat_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A ready worker silent this long is considered hung and is restarted.",
    )
    worker_logs_kept: int = Field(
        default=20, ge=1, description="Worker log files kept per deployment; older ones go."
    )

    @property
    def home_dir(self) -> Path:
        """HERD_HOME as an absolute path."""
        return self.home.expanduser().resolve()

    @property
    def models_path(self) -> Path:
        """The model store as an absolute path."""
        return self.models_dir.expanduser().resolve()

    @property
    def pgdata_dir(self) -> Path:
        """Data folder of the embedded PostgreSQL."""
        return self.home_dir / "pgdata"

    @property
    def logs_dir(self) -> Path:
        """Folder for the log files of processes that herd starts."""
        return self.home_dir / "logs"
