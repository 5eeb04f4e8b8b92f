"""Request rows kept on disk while PostgreSQL is unreachable: append-only JSONL, fsynced.

Each gateway appends to its own file and holds an exclusive flock on it while it runs, so
another gateway on the machine replays a file only when its writer is gone (crashed or
stopped during an outage). Replays insert with ON CONFLICT DO NOTHING, so replaying a file
twice (a crash between insert and truncate) adds nothing.

A write the disk refuses (full, read-only) raises OSError after taking back whatever part of
it landed, so the file never holds a torn line between whole rows.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import uuid
from io import FileIO
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Spool:
    """This gateway's spool file plus the orphaned files of gateways that are gone."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / f"requests-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._file: FileIO | None = None
        self.rows = 0  # rows in this gateway's own file

    def _open(self) -> FileIO:
        while self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Unbuffered: a write the disk refuses must not linger in a buffer and land,
            # torn, with the next one.
            f = self.path.open("ab", buffering=0)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Another gateway may have taken the new, still unlocked file for an orphan and
            # deleted it in between: then write to a fresh one, never to an unlinked inode.
            try:
                same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._file = f
            else:
                f.close()
        return self._file

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write rows durably: they are on disk when this returns. Raises OSError (rows not
        written, file as before) when the disk refuses them."""
        if not rows:
            return
        f = self._open()
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)
        size = os.fstat(f.fileno()).st_size
        try:
            view = memoryview(data)
            while view:
                written = f.write(view)
                if not written:  # no progress and no error: treat it as a full disk
                    raise OSError(errno.ENOSPC, "the spool file takes no more bytes")
                view = view[written:]
            os.fsync(f.fileno())
        except OSError:
            try:
                f.truncate(size)
            except OSError:
                logger.exception("could not take back a partial write to %s", self.path.name)
            raise
        self.rows += len(rows)

    def read_own(self) -> list[dict[str, Any]]:
        if self._file is None or self.rows == 0:
            return []
        return _read(self.path)

    def clear_own(self) -> None:
        """Forget the rows just replayed."""
        if self._file is not None:
            self._file.truncate(0)
            os.fsync(self._file.fileno())
        self.rows = 0

    def orphans(self) -> list[Path]:
        """Spool files of other gateways, oldest first."""
        if not self.directory.is_dir():
            return []
        files = [p for p in self.directory.glob("requests-*.jsonl") if p != self.path]
        return sorted(files, key=lambda p: p.stat().st_mtime)

    def replay_orphan(self, path: Path, insert: Any) -> int:
        """insert(rows) the rows of a gone gateway's file, then delete it; 0 if its writer
        still runs. insert raising leaves the file for the next try."""
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return 0
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # its gateway is alive and replays it itself
            rows = _read(path)
            insert(rows)
            path.unlink(missing_ok=True)
        logger.info("replayed %d spooled request rows from %s", len(rows), path.name)
        return len(rows)

    def close(self) -> None:
        if self._file is not None:
            empty = self.rows == 0
            self._file.close()
            self._file = None
            if empty:
                self.path.unlink(missing_ok=True)


def _read(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_bytes().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            # A line torn by a crash mid-write; the lines before it are whole.
            logger.warning("skipping a torn line in %s", path.name)
    return rows
