"""`herd up`'s restart counts on the gateway's /metrics: read from the database at scrape
time (so they outlive the gateway's own restart), the last read kept while it is down."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.common.prometheus import labels_text
from app.db.process_restarts import ProcessRestartRow, ProcessRestarts

# A scrape is not held longer than this by a database that does not answer.
READ_TIMEOUT_S = 2.0


class ProcessRestartMetrics:
    """herd_process_restarts_total and herd_process_crash_looping, per host and process."""

    def __init__(self, engine: Engine) -> None:
        self.store = ProcessRestarts(engine)
        self.rows: list[ProcessRestartRow] = []

    async def read(self) -> list[ProcessRestartRow]:
        # On failure the last counts read stay: a counter must not vanish while the database
        # is down.
        with contextlib.suppress(SQLAlchemyError, TimeoutError):
            self.rows = await asyncio.wait_for(asyncio.to_thread(self.store.all), READ_TIMEOUT_S)
        return self.rows

    def lines(self) -> list[str]:
        lines = [
            "# HELP herd_process_restarts_total Times herd up started a process again after it "
            "exited (postgres: the embedded server).",
            "# TYPE herd_process_restarts_total counter",
        ]
        for row in self.rows:
            labels = labels_text((("host", row.host), ("process", row.process)))
            lines.append(f"herd_process_restarts_total{labels} {row.restarts}")
        lines += [
            "# HELP herd_process_crash_looping 1 while a process herd up runs keeps crashing.",
            "# TYPE herd_process_crash_looping gauge",
        ]
        for row in self.rows:
            labels = labels_text((("host", row.host), ("process", row.process)))
            lines.append(f"herd_process_crash_looping{labels} {int(row.failing_since is not None)}")
        return lines
