"""Replicas as operators see them: the processes supervisors run (worker_processes) merged
with the rows their workers register (workers). Read only; Deployments hands these out
with each deployment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from app.db.bind import Bind, connect

WORKERS_SQL = text(
    """
    SELECT w.*,
           extract(epoch FROM now() - w.heartbeat_at) AS heartbeat_age_s,
           extract(epoch FROM now() - w.started_at) AS uptime_s
    FROM workers w
    WHERE (CAST(:deployment_id AS bigint) IS NULL OR w.deployment_id = :deployment_id)
    ORDER BY w.id
    """
)
PROCESSES_SQL = text(
    """
    SELECT p.*, extract(epoch FROM now() - p.started_at) AS uptime_s
    FROM worker_processes p
    WHERE (CAST(:deployment_id AS bigint) IS NULL OR p.deployment_id = :deployment_id)
    ORDER BY p.id
    """
)


@dataclass(frozen=True)
class WorkerView:
    """One replica as operators see it: the process the supervisor runs and what the
    worker reports about itself. Either side may be missing: a process that has not
    registered yet ('starting'), or a worker nobody here supervises (external, Kubernetes).
    """

    deployment_id: int | None
    worker_id: int | None
    pid: int | None
    node: str | None
    generation: int | None
    state: str
    url: str | None
    started_at: datetime | None
    uptime_s: float | None
    heartbeat_age_s: float | None
    slots_busy: int | None
    slots_total: int | None
    queue_length: int | None
    tokens_per_second: float | None
    rss_bytes: int | None
    vram_bytes: int | None
    error: str | None
    log_path: str | None
    gpu_offload_supported: bool | None
    n_gpu_layers_offloaded: int | None

    @property
    def is_ready(self) -> bool:
        return self.state == "ready"


def _as_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _worker_view(
    row: Mapping[str, Any] | None, process: Mapping[str, Any] | None, live_s: float
) -> WorkerView:
    """Merge a workers row and a worker_processes row (either may be None); a ready worker
    silent for live_s is shown as silent, as the gateway stops routing to it then."""
    w: Mapping[str, Any] = row or {}
    p: Mapping[str, Any] = process or {}
    if row is not None:
        state = str(row["state"])
        if state == "ready" and (_as_float(row["heartbeat_age_s"]) or 0) > live_s:
            state = "silent"
    else:
        state = "starting"
    if p.get("stop_requested_at") is not None and state not in ("stopped", "failed"):
        state = "stopping"
    return WorkerView(
        deployment_id=w.get("deployment_id") or p.get("deployment_id"),
        worker_id=w.get("id"),
        pid=w.get("pid") or p.get("pid"),
        node=p.get("node"),
        generation=p.get("generation"),
        state=state,
        url=w.get("url"),
        started_at=w.get("started_at") or p.get("started_at"),
        uptime_s=_as_float(w.get("uptime_s") if row is not None else p.get("uptime_s")),
        heartbeat_age_s=_as_float(w.get("heartbeat_age_s")),
        slots_busy=w.get("slots_busy"),
        slots_total=w.get("slots_total"),
        queue_length=w.get("queue_length"),
        tokens_per_second=_as_float(w.get("tokens_per_second")),
        rss_bytes=w.get("rss_bytes"),
        vram_bytes=w.get("vram_bytes"),
        error=w.get("error"),
        log_path=p.get("log_path") or w.get("log_path"),
        gpu_offload_supported=w.get("gpu_offload_supported"),
        n_gpu_layers_offloaded=w.get("n_gpu_layers_offloaded"),
    )


def worker_views(bind: Bind, deployment_id: int | None, live_s: float) -> list[WorkerView]:
    """Replicas of one deployment (or of all), supervised processes and worker rows merged;
    live_s is the liveness rule the gateway routes by (Settings.worker_live_s)."""
    with connect(bind) as conn:
        params = {"deployment_id": deployment_id}
        rows = [dict(r) for r in conn.execute(WORKERS_SQL, params).mappings()]
        processes = [dict(r) for r in conn.execute(PROCESSES_SQL, params).mappings()]
    views: list[WorkerView] = []
    matched: set[int] = set()
    for process in processes:
        # The pid ties a supervised process to the row its worker registered.
        row = next(
            (
                r
                for r in rows
                if r["pid"] == process["pid"]
                and r["deployment_id"] in (process["deployment_id"], None)
                and r["id"] not in matched
            ),
            None,
        )
        if row is not None:
            matched.add(row["id"])
        views.append(_worker_view(row, process, live_s))
    views.extend(_worker_view(r, None, live_s) for r in rows if r["id"] not in matched)
    return views
