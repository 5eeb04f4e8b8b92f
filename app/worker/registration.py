"""The worker's own row in `workers`: insert at start, update on every heartbeat, delete at
a clean exit. The only code that writes worker rows for a running worker."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, or_, update

from app.db.tables import Worker


@dataclass(frozen=True)
class WorkerRow:
    """Everything a worker says about itself, written whole each time."""

    host: str
    url: str
    pid: int
    state: str
    alias: str
    deployment_id: int | None = None
    model_id: int | None = None
    log_path: str | None = None
    error: str | None = None
    gpu_offload_supported: bool | None = None
    n_gpu_layers_offloaded: int | None = None
    slots_total: int | None = None
    slots_busy: int | None = None
    queue_length: int | None = None
    tokens_per_second: float | None = None
    rss_bytes: int | None = None
    vram_bytes: int | None = None

    def values(self) -> dict[str, Any]:
        return asdict(self)


class WorkerRegistry:
    """Writes one worker's row; handed the database engine by whoever runs the worker."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(self, row: WorkerRow) -> int:
        with self.engine.begin() as conn:
            worker_id = conn.execute(
                insert(Worker).values(**row.values()).returning(Worker.id)
            ).scalar_one()
        return int(worker_id)

    def update(self, worker_id: int, row: WorkerRow) -> bool:
        """Write row and a fresh heartbeat_at; False when the row is gone."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(Worker)
                .where(Worker.id == worker_id)
                .values(**row.values(), heartbeat_at=func.now())
            )
        return bool(result.rowcount)

    def delete(self, worker_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(Worker).where(Worker.id == worker_id))


def delete_rows_of_process(conn: Connection, pid: int, deployment_id: int) -> None:
    """Delete the rows a dead worker process left behind: the supervisor's clean-up, written
    here so that every write of `workers` has one place (it joins the caller's transaction)."""
    conn.execute(
        delete(Worker).where(
            Worker.pid == pid,
            or_(Worker.deployment_id == deployment_id, Worker.deployment_id.is_(None)),
        )
    )
