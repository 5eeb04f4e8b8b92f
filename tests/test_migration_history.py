"""Released Alembic revisions are frozen: a fix is a new revision, never an edit.

migrations/released.sha256 lists every revision file with its sha256 (`sha256sum` format).
A new revision is added to the list when it is committed; from then on, any edit to it
fails this test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

VERSIONS = Path(__file__).resolve().parents[1] / "migrations" / "versions"
RELEASED = VERSIONS.parent / "released.sha256"


def _released() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in RELEASED.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            entries[name.lstrip("*")] = digest
    return entries


def test_released_revisions_are_unchanged() -> None:
    changed = [
        name
        for name, digest in _released().items()
        if hashlib.sha256((VERSIONS / name).read_bytes()).hexdigest() != digest
    ]
    assert not changed, (
        f"released revisions were edited: {changed}; revert the edit and add a new revision"
    )


def test_every_revision_is_listed() -> None:
    on_disk = {p.name for p in VERSIONS.glob("[0-9]*.py")}
    unlisted = sorted(on_disk - set(_released()))
    assert not unlisted, (
        f"revisions missing from {RELEASED.name}: {unlisted}; add them with "
        "`cd migrations/versions && sha256sum NAME >> ../released.sha256`"
    )
    missing = sorted(set(_released()) - on_disk)
    assert not missing, f"listed revisions deleted from migrations/versions: {missing}"
