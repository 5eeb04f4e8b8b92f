"""The Overview page's numbers, each one SQL query."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

from app.db.process_restarts import ProcessRestartRow, ProcessRestarts, describe_exit

SUMMARY_SQL = text(
    """
    SELECT
      current_setting('server_version') AS server_version,
      (SELECT count(*) FROM models WHERE status = 'valid') AS models_valid,
      (SELECT count(*) FROM models WHERE status = 'invalid') AS models_invalid,
      (SELECT count(*) FROM models WHERE status = 'missing') AS models_missing,
      (SELECT count(*) FROM deployments WHERE state = 'active') AS deployments_active,
      (SELECT count(*) FROM workers
        WHERE state = 'ready' AND heartbeat_at > now() - make_interval(secs => :live_s))
        AS workers_ready,
      (SELECT count(*) FROM workers WHERE state NOT IN ('stopped')) AS workers_total,
      (SELECT count(*) FROM requests WHERE created_at > now() - interval '24 hours')
        AS requests_24h,
      (SELECT count(*) FROM feedback WHERE created_at > now() - interval '24 hours')
        AS feedback_24h,
      (SELECT count(*) FROM operators) AS operators
    """
)


@dataclass(frozen=True)
class FleetSummary:
    """Herd at a glance."""

    server_version: str
    models_valid: int
    models_invalid: int
    models_missing: int
    deployments_active: int
    workers_ready: int
    workers_total: int
    requests_24h: int
    feedback_24h: int
    operators: int


def fleet_summary(engine: Engine, live_s: float) -> FleetSummary:
    """Counts of models, deployments, workers (live: heartbeat younger than live_s, the
    Settings.worker_live_s rule) and the last day's traffic."""
    with engine.connect() as conn:
        row = conn.execute(SUMMARY_SQL, {"live_s": live_s}).mappings().one()
    return FleetSummary(**row)


def process_restarts(engine: Engine) -> list[ProcessRestartRow]:
    """What `herd up` started again, per host and process, with the last exit."""
    return ProcessRestarts(engine).all()


def restart_table(rows: list[ProcessRestartRow]) -> list[dict[str, object]]:
    """The Overview's restarts table: one row per process, its last exit in words."""
    return [
        {
            "host": row.host,
            "process": row.process,
            "restarts": row.restarts,
            "last exit": describe_exit(row.last_exit_code) if row.last_exit_at else "",
            "at": row.last_exit_at,
        }
        for row in rows
    ]
