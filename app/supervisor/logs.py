"""Worker log files: one per started process, under HERD_HOME/logs/workers/deployment-<id>/."""

from __future__ import annotations

import re
import time
from pathlib import Path

from app.config import Settings

DEFAULT_TAIL_BYTES = 64 * 1024


class LogAccessError(ValueError):
    """A log path outside Herd's log folder was asked for."""


def deployment_log_dir(settings: Settings, deployment_id: int) -> Path:
    return settings.logs_dir / "workers" / f"deployment-{deployment_id}"


def new_log_path(settings: Settings, deployment_id: int, alias: str, generation: int) -> Path:
    """A fresh, unique file for the next process of a deployment (its folder created)."""
    folder = deployment_log_dir(settings, deployment_id)
    folder.mkdir(parents=True, exist_ok=True)
    safe_alias = re.sub(r"[^A-Za-z0-9._-]+", "_", alias)[:64]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Nanoseconds keep two starts within one second apart; names still sort by time.
    return folder / f"{stamp}-{time.time_ns() % 10**9:09d}-g{generation}-{safe_alias}.log"


def prune_logs(settings: Settings, deployment_id: int, keep: set[Path]) -> None:
    """Delete the oldest log files of a deployment beyond settings.worker_logs_kept,
    never one in keep (the logs of running workers)."""
    folder = deployment_log_dir(settings, deployment_id)
    if not folder.is_dir():
        return
    files = sorted(folder.glob("*.log"))
    for old in files[: max(0, len(files) - settings.worker_logs_kept)]:
        if old not in keep:
            old.unlink(missing_ok=True)


def tail(settings: Settings, path: str | Path, max_bytes: int = DEFAULT_TAIL_BYTES) -> str:
    """The last max_bytes of a worker log (from its first whole line), '' if it is gone.

    Only files under Herd's log folder are read: the path comes from the database, and the
    dashboard must not become a way to read any file on the machine.
    """
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(settings.logs_dir.resolve()):
        raise LogAccessError(f"{path} is not a Herd log file")
    try:
        with resolved.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return ""
    if size > max_bytes and b"\n" in data:  # started mid-line
        data = data[data.index(b"\n") + 1 :]
    return data.decode("utf-8", errors="replace")


def last_lines(settings: Settings, path: str | Path, count: int = 5) -> list[str]:
    """The last non-empty lines of a log, for error messages."""
    lines = [line for line in tail(settings, path, 16 * 1024).splitlines() if line.strip()]
    return lines[-count:]
