"""The family tree of the models in the store: each model under the one it was made from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.db.tables import Model


@dataclass(frozen=True)
class LineageRow:
    """One model in the tree, with its depth (0: made outside Herd)."""

    depth: int
    model: Model

    def describe(self) -> dict[str, Any]:
        recipe = self.model.recipe or {}
        pruned = recipe.get("pruned_layers") or []
        return {
            "model": ("    " * self.depth + ("└─ " if self.depth else "")) + self.model.name,
            "type": self.model.file_type,
            "size_bytes": self.model.size_bytes,
            "recipe": (
                f"{recipe.get('ftype')} from {recipe.get('source_type')}"
                + (", requantized" if recipe.get("requantized") else "")
                + (f", pruned layers {pruned}" if pruned else "")
                if recipe
                else ""
            ),
            "made by": self.model.created_by or "",
            "llama.cpp": recipe.get("llama_cpp", ""),
            "sha256": (self.model.sha256 or "")[:16],
        }


def lineage_tree(models: Sequence[Model]) -> list[LineageRow]:
    """Models in tree order: each root (no parent in the list), then its children, by name."""
    ids = {m.id for m in models}
    children: dict[int | None, list[Model]] = {}
    for model in models:
        parent = model.parent_id if model.parent_id in ids else None
        children.setdefault(parent, []).append(model)
    rows: list[LineageRow] = []

    def walk(parent: int | None, depth: int) -> None:
        for model in sorted(children.get(parent, []), key=lambda m: m.name):
            rows.append(LineageRow(depth, model))
            walk(model.id, depth + 1)

    walk(None, 0)
    return rows
