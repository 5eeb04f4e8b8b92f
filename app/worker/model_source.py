"""Which GGUF file `--model` means: a path, or a name in the model store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from app.store.catalog import ModelStore


class ModelSourceError(ValueError):
    """--model names neither a file nor a model in the store."""


@dataclass(frozen=True)
class ModelSource:
    path: Path
    # The store's row when the file is in the store; None for a file elsewhere.
    model_id: int | None


def resolve_model(engine: Engine, models_root: Path, spec: str) -> ModelSource:
    store = ModelStore(engine, models_root)
    candidate = Path(spec).expanduser()
    if candidate.is_file():
        path = candidate.resolve()
        row = store.get(store.name_of(path)) if path.is_relative_to(store.root) else None
        return ModelSource(path, row.id if row is not None else None)
    row = store.get(spec)
    if row is None:
        raise ModelSourceError(
            f"--model {spec!r}: no such file, and no model of that name in the store "
            f"{store.root} (see `herd models list`)"
        )
    if row.status == "missing":
        raise ModelSourceError(f"model {spec!r} is missing from the store: {row.path} is gone")
    return ModelSource(Path(row.path), row.id)
