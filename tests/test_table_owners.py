"""Each table that names an owner module is written by that module alone: a change to how
a row is written (a check, a NOTIFY, an audit record) then has one place to go."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"

# table -> (ORM class, the one module that writes it)
OWNERS = {
    "deployments": ("Deployment", "control/deployments.py"),
    "evaluations": ("Evaluation", "evaluation/store.py"),
    "evaluation_answers": ("EvaluationAnswer", "evaluation/answers.py"),
    "datasets": ("Dataset", "datasets/store.py"),
    "files": ("File", "batches/files.py"),
    "batches": ("Batch", "batches/store.py"),
    "batch_requests": ("BatchRequest", "batches/store.py"),
    "process_restarts": ("ProcessRestart", "db/process_restarts.py"),
}


@pytest.mark.parametrize("table", sorted(OWNERS))
def test_only_the_owner_writes(table: str) -> None:
    orm, owner = OWNERS[table]
    writes = re.compile(
        rf"(INSERT INTO|UPDATE|DELETE FROM)\s+{table}\b|\b(insert|update|delete)\({orm}\)",
        re.IGNORECASE,
    )
    writers = sorted(
        str(path.relative_to(APP)) for path in APP.rglob("*.py") if writes.search(path.read_text())
    )
    assert writers == [owner]
