"""The `process_restarts` table: what `herd up` started again, per host and process.

`herd up` writes it (it may be the only herd process left running when a child dies); the
gateway's /metrics and the Overview page read it, so a count outlives the gateway's own
restart and is the same wherever it is shown.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text

RECORD_SQL = text(
    """
    INSERT INTO process_restarts
      (host, process, restarts, last_exit_code, last_exit_at, failing_since, log_path)
    VALUES (:host, :process, :restarts, :last_exit_code, :last_exit_at, :failing_since,
            :log_path)
    ON CONFLICT (host, process) DO UPDATE SET
      restarts = process_restarts.restarts + EXCLUDED.restarts,
      last_exit_code = COALESCE(EXCLUDED.last_exit_code, process_restarts.last_exit_code),
      last_exit_at = COALESCE(EXCLUDED.last_exit_at, process_restarts.last_exit_at),
      failing_since = EXCLUDED.failing_since,
      log_path = EXCLUDED.log_path,
      updated_at = now()
    """
)

ALL_SQL = text(
    """
    SELECT host, process, restarts, last_exit_code, last_exit_at, failing_since, log_path
    FROM process_restarts ORDER BY host, process
    """
)


@dataclass(frozen=True)
class ProcessRestartRow:
    """One process on one host: restarts so far, its last exit, whether it keeps crashing."""

    host: str
    process: str
    restarts: int
    last_exit_code: int | None
    last_exit_at: datetime | None
    failing_since: datetime | None
    log_path: str | None


class ProcessRestarts:
    """Reads and adds to the restart counts; the one writer of `process_restarts`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        host: str,
        process: str,
        *,
        restarts: int,
        last_exit_code: int | None,
        last_exit_at: datetime | None,
        failing_since: datetime | None,
        log_path: str | None,
    ) -> None:
        """Add restarts to the count and set the rest (an exit of None keeps the last one)."""
        with self.engine.begin() as conn:
            conn.execute(
                RECORD_SQL,
                {
                    "host": host,
                    "process": process,
                    "restarts": restarts,
                    "last_exit_code": last_exit_code,
                    "last_exit_at": last_exit_at,
                    "failing_since": failing_since,
                    "log_path": log_path,
                },
            )

    def all(self) -> list[ProcessRestartRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(ALL_SQL).mappings().all()
        return [ProcessRestartRow(**row) for row in rows]


def describe_exit(code: int | None) -> str:
    """How a process ended, in words: 'exited with code 1', 'was killed by SIGKILL'."""
    if code is None:
        return "stopped (exit code unknown)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
