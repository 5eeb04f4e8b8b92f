"""The `files` table and the bytes of uploaded files under HERD_HOME/files: the only code
that writes either."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Connection, Engine, RowMapping, delete, insert, select

from app.batches.jsonl import validate
from app.batches.owner import Owner
from app.db.tables import File
from app.openai_api.text import bad_text_at

CHUNK_BYTES = 1 << 20
PURPOSES = ("batch",)
_FILE_ID = re.compile(r"file-[0-9a-f]{24}")


class FileError(ValueError):
    """A file operation was refused; status is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_file") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class FileView:
    id: str
    purpose: str
    filename: str
    bytes: int
    lines: int
    created_at: datetime
    batch_id: str | None

    def openai(self) -> dict[str, object]:
        """The file as OpenAI's API shows it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at.timestamp()),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def is_file_id(value: str) -> bool:
    """Whether value has the shape new_file_id() gives: anything else names no file, and is
    answered without a query (a NUL byte, say, would make PostgreSQL refuse the statement)."""
    return _FILE_ID.fullmatch(value) is not None


def _view(row: RowMapping) -> FileView:
    return FileView(
        id=row["id"],
        purpose=row["purpose"],
        filename=row["filename"],
        bytes=row["bytes"],
        lines=row["lines"],
        created_at=row["created_at"],
        batch_id=row["batch_id"],
    )


class FileStore:
    """Upload, read, delete files; register a batch's output and error files."""

    def __init__(self, engine: Engine, root: Path) -> None:
        self.engine = engine
        self.root = root

    def path_of(self, file_id: str) -> Path:
        return self.root / f"{file_id}.jsonl"

    def save_upload(
        self,
        source: BinaryIO,
        *,
        filename: str,
        purpose: str,
        owner: Owner,
        max_bytes: int,
    ) -> FileView:
        """Copy source to disk in chunks, refuse it over max_bytes or when a line is not a
        batch request (FileError naming the lines), then record it."""
        if purpose not in PURPOSES:
            raise FileError(
                f"purpose {purpose!r} is not supported; Herd takes files with purpose 'batch'",
                code="invalid_purpose",
            )
        bad = bad_text_at(filename, "filename")
        if bad is not None:
            raise FileError(bad, code="invalid_filename")
        self.root.mkdir(parents=True, exist_ok=True)
        file_id = new_file_id()
        partial = self.root / f".{file_id}.partial"
        size = 0
        try:
            with partial.open("wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FileError(
                            f"the file is larger than the limit of {max_bytes} bytes "
                            "(HERD_BATCH_FILE_MAX_BYTES)",
                            status=413,
                            code="file_too_large",
                        )
                    out.write(chunk)
            try:
                lines = validate(partial)
            except ValueError as exc:
                raise FileError(str(exc)) from None
            partial.rename(self.path_of(file_id))
        finally:
            partial.unlink(missing_ok=True)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(File).values(
                        id=file_id,
                        purpose=purpose,
                        filename=filename[:255] or "batch.jsonl",
                        bytes=size,
                        lines=lines,
                        api_key_id=owner.api_key_id,
                    )
                )
        except Exception:
            self.path_of(file_id).unlink(missing_ok=True)
            raise
        return self.get(file_id, owner)

    def get(self, file_id: str, owner: Owner) -> FileView:
        if not is_file_id(file_id):
            raise FileError(f"no file {file_id[:64]!r}", status=404, code="file_not_found")
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(File.__table__).where(File.id == file_id, owner.clause(File.api_key_id))
                )
                .mappings()
                .first()
            )
        if row is None:
            raise FileError(f"no file {file_id!r}", status=404, code="file_not_found")
        return _view(row)

    def recent(self, owner: Owner, purpose: str | None = None, limit: int = 100) -> list[FileView]:
        """The caller's newest files first (of one purpose, if given)."""
        query = select(File.__table__).where(owner.clause(File.api_key_id))
        if purpose is not None and purpose not in PURPOSES:
            return []  # no file was ever stored with it (and it may hold a NUL byte)
        if purpose is not None:
            query = query.where(File.purpose == purpose)
        query = query.order_by(File.created_at.desc(), File.id).limit(limit)
        with self.engine.connect() as conn:
            return [_view(row) for row in conn.execute(query).mappings()]

    def chunks(self, file_id: str) -> Iterator[bytes]:
        """The bytes of an uploaded file."""
        with self.path_of(file_id).open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk

    def delete(self, file_id: str, owner: Owner) -> None:
        view = self.get(file_id, owner)
        with self.engine.begin() as conn:
            conn.execute(delete(File).where(File.id == view.id))
        self.path_of(view.id).unlink(missing_ok=True)

    def add_batch_file(
        self, conn: Connection, *, batch_id: str, purpose: str, size: int, lines: int,
        api_key_id: int | None,
    ) -> str:  # fmt: skip
        """Record a batch's output or error file inside the caller's transaction (the
        batch's finalization); its bytes are rendered from `batch_requests` when read."""
        file_id = new_file_id()
        conn.execute(
            insert(File).values(
                id=file_id,
                purpose=purpose,
                filename=f"{batch_id}_{'output' if purpose == 'batch_output' else 'error'}.jsonl",
                bytes=size,
                lines=lines,
                api_key_id=api_key_id,
                batch_id=batch_id,
            )
        )
        return file_id
