"""The `evaluations` table: the only code that writes it, and the queries pages read."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, insert, text

from app.db.tables import Evaluation
from app.evaluation.metrics import UNITS, Metric

# The newest value of each metric per model, with the model's name and lineage fields.
_LATEST = text("""
    SELECT DISTINCT ON (e.model_id, e.metric)
           e.model_id, m.name AS model, m.file_type, m.parent_id, e.metric, e.value, e.unit,
           e.settings, e.created_at, e.job_id
    FROM evaluations e JOIN models m ON m.id = e.model_id
    ORDER BY e.model_id, e.metric, e.created_at DESC, e.id DESC
""")


class EvaluationStore:
    """Record a model's measured metrics; read the latest per model."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        model_id: int,
        values: dict[Metric, float],
        settings: dict[str, Any],
        job_id: int | None = None,
    ) -> None:
        rows = [
            {"model_id": model_id, "job_id": job_id, "metric": metric.value,
             "value": float(value), "unit": UNITS[metric], "settings": settings}
            for metric, value in values.items()
        ]  # fmt: skip
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(Evaluation), rows)

    def latest(self) -> list[dict[str, Any]]:
        """One row per model: its newest value of every metric (columns named by metric)."""
        with self.engine.connect() as conn:
            rows = conn.execute(_LATEST).mappings().all()
        by_model: dict[int, dict[str, Any]] = {}
        for row in rows:
            entry = by_model.setdefault(
                row["model_id"],
                {"model_id": row["model_id"], "model": row["model"],
                 "file_type": row["file_type"], "parent_id": row["parent_id"],
                 "evaluated_at": row["created_at"], "settings": row["settings"],
                 "job_id": row["job_id"]},
            )  # fmt: skip
            entry[row["metric"]] = row["value"]
            if row["created_at"] > entry["evaluated_at"]:
                entry["evaluated_at"] = row["created_at"]
                entry["settings"] = row["settings"]
                entry["job_id"] = row["job_id"]
        return sorted(by_model.values(), key=lambda r: r["model"])
