"""Released Alembic revisions are frozen: a fix is a new revision, never an edit.

migrations/released.sha256 lists every revision file with its sha256 (`sha256sum` format).
A new revision is added to the list when it is committed; from then on, any edit to it
fails this test. The list itself is held to its history on the main branch: a released line
can be added, never changed or removed (a merge that re-chains a released revision must add
an Alembic merge revision instead).
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ROOT / "migrations" / "versions"
RELEASED = VERSIONS.parent / "released.sha256"
RELEASED_PATH = "migrations/released.sha256"
MAIN_REFS = ("main", "origin/main")
# History is checked from the last merge that re-chained released revisions (0011, 0013,
# 0017 and 0018 were rewritten at the merges up to this one, before this check existed).
CHECKED_SINCE = "7220c0f734395067586097476af71e9bd666d2de"


def _parse(text: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            entries[name.lstrip("*")] = digest
    return entries


def _released() -> dict[str, str]:
    return _parse(RELEASED.read_text())


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    )


def _main_ref() -> str:
    """The main branch to compare with; skips when git or the history is not there."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the released list cannot be compared with main")
    if _git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("not a git checkout: the released list cannot be compared with main")
    for ref in MAIN_REFS:
        if _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode == 0:
            if _git("merge-base", "--is-ancestor", CHECKED_SINCE, ref).returncode != 0:
                pytest.skip(f"{ref} lacks commit {CHECKED_SINCE[:10]} (a shallow clone?)")
            return ref
    pytest.skip(f"no main branch ({' or '.join(MAIN_REFS)}) to compare the released list with")


def _lost(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Released lines of before that after changed or dropped."""
    return [
        f"{name} {'removed' if name not in after else 'changed'}"
        for name, digest in sorted(before.items())
        if after.get(name) != digest
    ]


def _on_main(ref: str) -> list[tuple[str, dict[str, str]]]:
    """(commit, list) for each version of the list on ref's first-parent line, oldest
    first, from CHECKED_SINCE on."""
    log = _git(
        "log", "--first-parent", "--format=%H", f"{CHECKED_SINCE}^..{ref}", "--", RELEASED_PATH
    )
    assert log.returncode == 0, log.stderr
    return [
        (commit, _parse(_git("show", f"{commit}:{RELEASED_PATH}").stdout))
        for commit in reversed(log.stdout.split())
    ]


def test_released_lines_are_never_changed_on_main() -> None:
    """Each commit on main keeps every line the list had before it."""
    versions = _on_main(_main_ref())
    broken = [
        f"{commit[:10]}: {', '.join(lost)}"
        for (_, before), (commit, after) in itertools.pairwise(versions)
        if (lost := _lost(before, after))
    ]
    assert not broken, (
        f"commits on main changed released lines of {RELEASED_PATH}: {broken}; "
        "released revisions are never re-chained: add a merge revision"
    )


def test_released_lines_of_main_are_kept() -> None:
    """This checkout keeps every line the list had where it left main (the merge base)."""
    ref = _main_ref()
    base = _git("merge-base", "HEAD", ref).stdout.strip()
    if not base:
        pytest.skip(f"HEAD shares no history with {ref}")
    shown = _git("show", f"{base}:{RELEASED_PATH}")
    assert shown.returncode == 0, shown.stderr
    lost = _lost(_parse(shown.stdout), _released())
    assert not lost, (
        f"{RELEASED_PATH} changed or dropped lines released on {ref} ({base[:10]}): {lost}; "
        "restore them and add a new revision (or a merge revision) instead"
    )


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
