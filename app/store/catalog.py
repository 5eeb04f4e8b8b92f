"""The model store: GGUF files under one folder, mirrored into the `models` table."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, exists, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.common.host_memory import free_bytes_for
from app.db.bind import Bind, begin
from app.db.tables import Deployment, Model, Request
from app.store.estimate import default_slots, estimate_memory
from app.store.gguf_file import GGUFInfo, InvalidGGUF, ModelLayout, read_gguf

DEFAULT_ESTIMATE_CTX = 4096
SUMMARY_COLUMNS = (
    "name", "path", "status", "error", "sha256", "size_bytes", "architecture",
    "parameter_count", "file_type", "quantization", "context_length", "block_count",
    "embedding_length", "head_count", "head_count_kv", "has_chat_template",
)  # fmt: skip
# Called with (file name, bytes hashed so far, file size) while a file is hashed.
ProgressCallback = Callable[[str, int, int], None]
HASH_CHUNK = 4 * 1024 * 1024


class ModelStoreError(ValueError):
    """An operation on the store was refused; the message says why."""


@dataclass
class ScanReport:
    """What a scan found."""

    valid: list[str] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    hashed: list[str] = field(default_factory=list)


def sha256_file(path: Path, progress: ProgressCallback | None = None) -> str:
    """Hex sha256 of a file, read in chunks, reporting progress."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(path.name, done, total)
    return digest.hexdigest()


def _valid_row(info: GGUFInfo, sha256: str) -> dict[str, Any]:
    """The `models` columns of a valid GGUF read from its header."""
    return {
        "status": "valid",
        "error": None,
        "sha256": sha256,
        "architecture": info.architecture,
        "parameter_count": info.parameter_count,
        "file_type": info.file_type,
        "quantization": info.quantization,
        "context_length": info.context_length,
        "block_count": info.block_count,
        "embedding_length": info.embedding_length,
        "head_count": info.head_count,
        "head_count_kv": info.head_count_kv,
        "has_chat_template": info.has_chat_template,
        "chat_template_tools": info.chat_template_tools,
        "layout": info.layout.to_json(),
    }


class ModelStore:
    """GGUF files under root and their rows; the only writer of the `models` table."""

    def __init__(self, engine: Bind, root: Path) -> None:
        self.engine = engine
        self.root = root.expanduser().resolve()

    def _files(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for dirpath, _dirs, files in os.walk(self.root, followlinks=False):
            for name in sorted(files):
                if name.lower().endswith(".gguf"):
                    yield Path(dirpath) / name

    def name_of(self, path: Path) -> str:
        """The store-relative name of a file in the store."""
        return path.resolve().relative_to(self.root).as_posix()

    def scan(self, progress: ProgressCallback | None = None) -> ScanReport:
        """Read every .gguf under root into `models`; never raises for a bad file."""
        report = ScanReport()
        with Session(self.engine) as session:
            known = {m.name: m for m in session.scalars(select(Model))}
        seen: set[str] = set()
        for path in self._files():
            name = path.relative_to(self.root).as_posix()
            seen.add(name)
            row = self._scan_file(path, name, known.get(name), progress, report)
            if row["status"] == "valid":
                report.valid.append(name)
            else:
                report.invalid[name] = row["error"] or "invalid"
        gone = [name for name, m in known.items() if name not in seen and m.status != "missing"]
        if gone:
            with Session(self.engine) as session, session.begin():
                for model in session.scalars(select(Model).where(Model.name.in_(gone))):
                    model.status = "missing"
                    model.error = "file no longer in the model store"
            report.missing.extend(gone)
        return report

    def _scan_file(
        self,
        path: Path,
        name: str,
        known: Model | None,
        progress: ProgressCallback | None,
        report: ScanReport,
    ) -> dict[str, Any]:
        try:
            stat = path.stat()
        except OSError as exc:
            failed = {"size_bytes": 0, "mtime_ns": 0, "status": "invalid", "error": str(exc)}
            return self._upsert(name, path, failed)
        unchanged = (
            known is not None
            and known.size_bytes == stat.st_size
            and known.mtime_ns == stat.st_mtime_ns
            and known.status != "missing"
        )
        if unchanged and known is not None:
            # Size and mtime unchanged: trust the stored header summary and sha256.
            return {"status": known.status, "error": known.error}
        row: dict[str, Any] = {"size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        try:
            info = read_gguf(path)
        except InvalidGGUF as exc:
            row.update(status="invalid", error=str(exc), sha256=None, layout=None)
            return self._upsert(name, path, row)
        try:
            sha = sha256_file(path, progress)
        except OSError as exc:
            row.update(status="invalid", error=f"unreadable: {exc}", sha256=None, layout=None)
            return self._upsert(name, path, row)
        report.hashed.append(name)
        row.update(_valid_row(info, sha))
        return self._upsert(name, path, row)

    def place(
        self,
        source: Path,
        name: str,
        lineage: dict[str, Any],
        progress: ProgressCallback | None = None,
    ) -> Model:
        """Validate a finished file, move it into the store under name (never overwriting)
        and write its row with lineage (parent_id, recipe, created_by) in one step.

        source is a temporary file in the store's file system; it is gone afterwards.
        """
        target = self.destination(name)
        try:
            info = read_gguf(source)
        except InvalidGGUF as exc:
            raise ModelStoreError(f"the new file is not a valid GGUF: {exc}") from exc
        sha = sha256_file(source, progress)
        stat = source.stat()
        row = {"size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, **_valid_row(info, sha)}
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)  # fails if the name appeared meanwhile: no overwrite
        except FileExistsError as exc:
            raise ModelStoreError(f"{self.name_of(target)} already exists") from exc
        try:
            self._upsert(name, target, {**row, **lineage})
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        source.unlink(missing_ok=True)
        placed = self.get(name)
        assert placed is not None
        return placed

    def _upsert(self, name: str, path: Path, row: dict[str, Any]) -> dict[str, Any]:
        values = {"name": name, "path": str(path), **row}
        stmt = insert(Model).values(values)
        update = {k: stmt.excluded[k] for k in values if k != "name"}
        update["scanned_at"] = stmt.excluded.scanned_at
        with begin(self.engine) as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=update))
        return row

    def list(self) -> list[Model]:
        """Every model row, valid first, by name."""
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(Model).order_by((Model.status != "valid"), Model.name)
            return list(session.scalars(query))

    def get(self, name: str) -> Model | None:
        """The row for a store-relative name."""
        with Session(self.engine, expire_on_commit=False) as session:
            return session.scalar(select(Model).where(Model.name == name))

    def destination(self, name: str) -> Path:
        """Where a file called name would go; refuses names that leave the store."""
        if not name or name.strip() != name or "\x00" in name:
            raise ModelStoreError(f"invalid model name {name!r}")
        if not name.lower().endswith(".gguf"):
            raise ModelStoreError(f"model file names end in .gguf: {name!r}")
        target = (self.root / name).resolve()
        if not target.is_relative_to(self.root) or target == self.root:
            raise ModelStoreError(f"{name!r} would be written outside the model store {self.root}")
        return target

    def add(
        self,
        source: Path,
        name: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Model:
        """Validate source and copy it into the store under name (default: its file name)."""
        try:
            source = source.expanduser()
            if not source.is_file():
                raise ModelStoreError(f"no such file: {str(source)[:300]}")
            read_gguf(source)
            target = self.destination(name or source.name)
            taken = target.exists() or target.is_symlink()
        except InvalidGGUF as exc:
            raise ModelStoreError(f"{source} is not a valid GGUF: {exc}") from exc
        except (OSError, RuntimeError) as exc:
            # A name too long, a folder not readable, "~nobody": a path the caller got wrong.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ModelStoreError(f"cannot use {str(source)[:300]!r}: {reason}") from None
        if taken:
            raise ModelStoreError(
                f"{self.name_of(target)} already exists in the model store; "
                "choose another name with --name"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copy to a hidden temporary file first, so a failed copy never looks like a model.
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".partial-", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, HASH_CHUNK)
            try:
                os.link(tmp, target)  # fails if the name appeared meanwhile: no overwrite
            except FileExistsError as exc:
                raise ModelStoreError(f"{self.name_of(target)} already exists") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return self.rescan_one(target, progress)

    def delete(self, name: str) -> Model:
        """Remove a model no deployment uses: its row, then its file (if still there)."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.scalar(select(Model).where(Model.name == name).with_for_update())
            if row is None:
                raise ModelStoreError(f"no model called {name!r} in the store")
            users = session.scalars(
                select(Deployment.alias).where(Deployment.model_id == row.id)
            ).all()
            if users:
                raise ModelStoreError(
                    f"{name} is in use by deployment(s) of {', '.join(sorted(set(users)))}; "
                    "delete or roll them first"
                )
            session.execute(delete(Model).where(Model.id == row.id))
        target = self.root / name
        if target.resolve().is_relative_to(self.root):
            target.unlink(missing_ok=True)
        return row

    def rescan_one(self, path: Path, progress: ProgressCallback | None = None) -> Model:
        """Scan a single file of the store and return its row."""
        name = self.name_of(path)
        self._scan_file(path, name, self.get(name), progress, ScanReport())
        row = self.get(name)
        assert row is not None
        return row


def default_slots_for(model: Model, n_gpu_layers: int, n_ctx: int, main_gpu: int = 0) -> int:
    """Parallel slots to offer by default for model on this host (estimate.default_slots)."""
    if not model.layout or model.status != "valid":
        return 1
    layout = ModelLayout.from_json(model.layout)
    return default_slots(layout, n_gpu_layers, n_ctx, free_bytes_for(n_gpu_layers, main_gpu))


def describe_model(
    model: Model, n_gpu_layers: int = 0, n_ctx: int | None = None, slots: int = 1
) -> dict[str, Any]:
    """A model row as plain data, with its memory estimate for n_gpu_layers and `slots`
    parallel sequences of n_ctx tokens each.

    n_ctx defaults to the model's trained context, capped at 4096 tokens.
    """
    row: dict[str, Any] = {column: getattr(model, column) for column in SUMMARY_COLUMNS}
    row["estimate"] = None
    if model.layout and model.status == "valid":
        ctx = n_ctx or min(model.context_length or DEFAULT_ESTIMATE_CTX, DEFAULT_ESTIMATE_CTX)
        est = estimate_memory(ModelLayout.from_json(model.layout), n_gpu_layers, ctx, slots)
        row["estimate"] = {
            "n_gpu_layers": n_gpu_layers,
            "n_ctx": ctx,
            "slots": slots,
            "gpu_layers": est.gpu_layers,
            "vram_bytes": est.vram_bytes,
            "ram_bytes": est.ram_bytes,
        }
    return row


def add_models_without_files(conn: Connection, rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Model rows that stand for no file in the store (demo traffic's), created where their
    name is missing and left alone where it is there: name -> id."""
    rows = list(rows)
    if not rows:
        return {}
    conn.execute(insert(Model).values(rows).on_conflict_do_nothing(index_elements=["name"]))
    names = [row["name"] for row in rows]
    found = conn.execute(select(Model.name, Model.id).where(Model.name.in_(names)))
    return {name: int(model_id) for name, model_id in found}


def delete_unused_models(conn: Connection, names: Iterable[str]) -> None:
    """Delete the rows of these models that no deployment and no logged request uses."""
    conn.execute(
        delete(Model).where(
            Model.name.in_(list(names)),
            ~exists().where(Deployment.model_id == Model.id),
            ~exists().where(Request.model_id == Model.id),
        )
    )
