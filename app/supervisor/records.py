"""The supervisor's SQL: desired deployments in, process records and failure counts out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from app.engine.serving import SERVING_FIELDS, ServingParams, serving_values_from
from app.worker.registration import WorkerRegistry, delete_rows_of_process


@dataclass(frozen=True, kw_only=True)
class DesiredDeployment(ServingParams):
    """A deployment as the supervisor needs it: what to run, how (ServingParams), how many."""

    id: int
    alias: str
    model_name: str
    model_path: str
    model_status: str
    replicas: int
    state: str
    generation: int
    failures: int


@dataclass(frozen=True)
class ProcessRecord:
    """A row of worker_processes."""

    id: int
    deployment_id: int
    generation: int
    pid: int
    log_path: str
    stop_requested: bool


@dataclass(frozen=True)
class WorkerRow:
    """What a worker reports about itself, as far as the supervisor cares."""

    id: int
    pid: int | None
    deployment_id: int | None
    state: str
    url: str
    error: str | None
    heartbeat_age_s: float


# replicas: those placed on this node (app/supervisor/placement.py), not the total; a
# deployment with none here is still listed, so that workers left here are stopped.
DESIRED_SQL = text(
    f"""
    SELECT d.id, d.alias, m.name AS model_name, m.path AS model_path,
           m.status AS model_status,
           (SELECT count(*) FROM placements p
            WHERE p.deployment_id = d.id AND p.node = :node)::int AS replicas,
           d.state, d.generation, d.failures,
           {", ".join(f"d.{name}" for name in SERVING_FIELDS)}
    FROM deployments d JOIN models m ON m.id = d.model_id
    WHERE NOT d.external
    """
)
WORKER_ROWS_SQL = text(
    """
    SELECT id, pid, deployment_id, state, url, error,
           extract(epoch FROM now() - heartbeat_at) AS heartbeat_age_s
    FROM workers WHERE pid = ANY(:pids)
    ORDER BY id DESC
    """
)
# Rows of workers on loopback addresses (so on this machine) that stopped heartbeating.
STALE_LOCAL_SQL = text(
    """
    SELECT id, pid FROM workers
    WHERE heartbeat_at < now() - make_interval(secs => :stale_s)
      AND (url LIKE 'http://127.%' OR url LIKE 'http://localhost%' OR url LIKE 'http://[::1]%')
    """
)


class SupervisorRecords:
    """The supervisor's reads and writes, for one node."""

    def __init__(self, engine: Engine, node: str) -> None:
        self.engine = engine
        self.node = node

    def desired(self) -> dict[int, DesiredDeployment]:
        """Supervised deployments by id, with the replicas placed on this node (every
        state: 'stopped' ones are stopped here)."""
        with self.engine.connect() as conn:
            rows = conn.execute(DESIRED_SQL, {"node": self.node}).mappings().all()
        found = {}
        for row in rows:
            values: dict[str, Any] = dict(row)
            values.update(serving_values_from(row))
            found[row["id"]] = DesiredDeployment(**values)
        return found

    def processes(self) -> list[ProcessRecord]:
        """This node's process records."""
        query = text(
            "SELECT id, deployment_id, generation, pid, log_path, "
            "stop_requested_at IS NOT NULL AS stop_requested "
            "FROM worker_processes WHERE node = :node ORDER BY id"
        )
        with self.engine.connect() as conn:
            return [ProcessRecord(**r) for r in conn.execute(query, {"node": self.node}).mappings()]

    def add_process(self, deployment_id: int, generation: int, pid: int, log_path: str) -> int:
        query = text(
            "INSERT INTO worker_processes (node, deployment_id, generation, pid, log_path) "
            "VALUES (:node, :deployment_id, :generation, :pid, :log_path) "
            # A pid recycled from a record a crash left behind: the new process wins.
            "ON CONFLICT (node, pid) DO UPDATE SET deployment_id = excluded.deployment_id, "
            "generation = excluded.generation, log_path = excluded.log_path, "
            "started_at = now(), stop_requested_at = NULL "
            "RETURNING id"
        )
        params = {
            "node": self.node,
            "deployment_id": deployment_id,
            "generation": generation,
            "pid": pid,
            "log_path": log_path,
        }
        with self.engine.begin() as conn:
            return int(conn.execute(query, params).scalar_one())

    def mark_stopping(self, record_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text("UPDATE worker_processes SET stop_requested_at = now() WHERE id = :id"),
                {"id": record_id},
            )

    def forget(self, record_id: int, pid: int, deployment_id: int) -> None:
        """Drop a process record and the row its (now dead) worker left behind."""
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM worker_processes WHERE id = :id"), {"id": record_id})
            delete_rows_of_process(conn, pid, deployment_id)

    def worker_rows(self, pids: Iterable[int]) -> list[WorkerRow]:
        """Worker rows with these pids, newest first."""
        pid_list = sorted(set(pids))
        if not pid_list:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(WORKER_ROWS_SQL, {"pids": pid_list}).mappings().all()
        return [
            WorkerRow(**{**r, "heartbeat_age_s": float(r["heartbeat_age_s"] or 0.0)}) for r in rows
        ]

    def stale_local_workers(self, stale_s: float) -> list[tuple[int, int | None]]:
        """(row id, pid) of loopback workers silent for stale_s seconds."""
        with self.engine.connect() as conn:
            rows = conn.execute(STALE_LOCAL_SQL, {"stale_s": stale_s}).all()
        return [(int(r.id), r.pid) for r in rows]

    def delete_worker_row(self, worker_id: int) -> None:
        WorkerRegistry(self.engine).delete(worker_id)
