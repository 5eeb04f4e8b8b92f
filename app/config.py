"""One Settings object for every herd process, read from HERD_* environment variables."""

from __future__ import annotations

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
