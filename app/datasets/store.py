"""The `datasets` table: one row per dataset written under HERD_HOME/datasets/ (its only
writer)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.datasets.rows import DatasetError
from app.db.tables import Dataset


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    kind: str
    created_by: str
    created_at: datetime
    source: dict[str, Any]
    steps: list[dict[str, Any]]
    split_rows: dict[str, int]
    rows: int
    path: Path
    card: dict[str, Any]


def _info(row: Dataset) -> DatasetInfo:
    return DatasetInfo(
        row.id,
        row.name,
        row.kind,
        row.created_by,
        row.created_at,
        row.source,
        row.steps,
        row.split_rows,
        row.rows,
        Path(row.path),
        row.card,
    )


class DatasetStore:
    """Lists and records datasets; the files themselves are written by build.py."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def list(self) -> list[DatasetInfo]:
        with Session(self.engine) as session:
            query = select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id.desc())
            return [_info(row) for row in session.scalars(query)]

    def get(self, name: str) -> DatasetInfo | None:
        with Session(self.engine) as session:
            row = session.scalars(select(Dataset).where(Dataset.name == name)).first()
            return _info(row) if row is not None else None

    def exists(self, name: str) -> bool:
        return self.get(name) is not None

    def record(self, conn: Connection, card: dict[str, Any], path: Path) -> int:
        """Insert the dataset's row in the caller's transaction (committed once its files are
        in place); DatasetError if the name is taken."""
        try:
            with conn.begin_nested():
                return int(
                    conn.execute(
                        insert(Dataset)
                        .values(
                            name=card["name"],
                            kind=card["kind"],
                            created_by=card["created_by"],
                            source=card["source"],
                            steps=card["steps"],
                            split_rows=card["split_rows"],
                            rows=sum(card["split_rows"].values()),
                            path=str(path),
                            card=card,
                        )
                        .returning(Dataset.id)
                    ).scalar_one()
                )
        except IntegrityError as exc:
            raise DatasetError(f"a dataset named {card['name']!r} exists already") from exc
