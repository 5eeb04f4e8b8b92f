"""Build a dataset: selected rows -> cleaning -> splits -> JSONL files, card and table row.

Files are written into a hidden folder and renamed into place in the transaction that
records the dataset, so a failed build leaves neither files nor a row behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from app.analytics.eligible import RULE_OF
from app.control import audit
from app.control.audit import Actor
from app.datasets.card import write_card
from app.datasets.cleaning import CleaningOptions, StepProgress, StepReport, clean
from app.datasets.rows import DatasetError, DatasetKind, DatasetRow
from app.datasets.selection import Selected
from app.datasets.splits import SplitRatios, split_rows
from app.datasets.store import DatasetInfo, DatasetStore

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def datasets_root(home: Path) -> Path:
    """Where datasets live: HERD_HOME/datasets/<name>/."""
    return home / "datasets"


@dataclass(frozen=True)
class BuildSpec:
    """What to call the dataset and how to clean and split it."""

    name: str
    created_by: str
    kind: DatasetKind = DatasetKind.SFT
    cleaning: CleaningOptions = field(default_factory=CleaningOptions)
    ratios: SplitRatios = field(default_factory=SplitRatios)
    seed: int = 0


def check_name(engine: Engine, root: Path, name: str) -> None:
    """DatasetError unless name is a free, safe folder name."""
    if not NAME.fullmatch(name):
        raise DatasetError(
            f"dataset name {name!r}: 1-100 letters, digits, '.', '_' or '-', not starting "
            "with '.', '_' or '-'"
        )
    if DatasetStore(engine).exists(name) or (root / name).exists():
        raise DatasetError(f"a dataset named {name!r} exists already")


def selection_steps(selected: Selected) -> list[StepReport]:
    """The selection as the card's first steps: the logged rows it matched that are no real
    user turn, one step per reason in force (app/analytics/eligible.py); those past its
    limit; then the prompts that are not chat messages."""
    steps = []
    read = len(selected.rows) + selected.unusable
    excluded = selected.excluded
    if excluded is not None:
        rows_in = excluded.matched
        for reason, removed in excluded.excluded.items():
            step = StepReport(f"excluded_{reason}", RULE_OF[reason].description, rows_in, removed)
            steps.append(step)
            rows_in -= removed
        if rows_in > read:
            steps.append(StepReport("limit", "past the selection's limit", rows_in, rows_in - read))
    steps.append(
        StepReport(
            "unusable_prompt",
            "prompt is not chat messages (e.g. token arrays)",
            read,
            selected.unusable,
        )
    )
    return steps


def clean_selected(
    selected: Selected, spec: BuildSpec, answers: bool, progress: StepProgress | None = None
) -> tuple[list[DatasetRow], list[StepReport]]:
    """The selection's rows cleaned, with the steps so far; DatasetError when none are left."""
    if not selected.rows:
        what = "request" if selected.source.get("type") == "request_log" else "record"
        raise DatasetError(f"the selection matched no usable {what}s; nothing was written")
    result = clean(selected.rows, spec.cleaning, answers=answers, progress=progress)
    steps = [*selection_steps(selected), *result.steps]
    if not result.rows:
        raise DatasetError(
            "cleaning removed every row; nothing was written: "
            + ", ".join(f"{s.step} -{s.removed}" for s in steps if s.removed)
        )
    return result.rows, steps


def write_dataset(
    engine: Engine,
    root: Path,
    spec: BuildSpec,
    rows: list[DatasetRow],
    steps: list[StepReport],
    selected: Selected,
    extra: dict[str, Any] | None = None,
    on_write: Callable[[str, int], None] | None = None,
    actor: Actor | None = None,
) -> DatasetInfo:
    """Split rows, write the JSONL files and the card, record the dataset; all or nothing.
    selected is where the rows came from (its source and exclusions go on the card). With
    an actor, the dataset's "dataset.build" audit row is written in the same transaction."""
    check_name(engine, root, spec.name)
    if not rows:
        raise DatasetError("no rows to write; nothing was written")
    splits = split_rows(rows, spec.ratios, spec.seed)
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{spec.name}.partial-{uuid.uuid4().hex[:8]}"
    final = root / spec.name
    partial.mkdir()
    renamed = False
    try:
        files = {}
        for split, members in splits.items():
            if not members:
                continue  # an empty JSON file is not a loadable split
            files[split] = f"{split}.jsonl"
            with (partial / files[split]).open("w", encoding="utf-8") as out:
                for row in members:
                    out.write(json.dumps(row.record(), ensure_ascii=False) + "\n")
            if on_write is not None:
                on_write(split, len(members))
        held_out = _write_held_out(partial, splits)
        card: dict[str, Any] = {
            "name": spec.name,
            "kind": spec.kind.value,
            "created_by": spec.created_by,
            "created_at": datetime.now(UTC).isoformat(),
            "source": selected.source,
            "steps": [s.as_dict() for s in steps],
            "cleaning": spec.cleaning.describe(),
            "seed": spec.seed,
            "ratios": asdict(spec.ratios),
            "split_rows": {split: len(members) for split, members in splits.items()},
            "synthetic_rows": sum(r.synthetic for r in rows),
            # Logged rows left out as no real user turn, per reason (request log only).
            **({} if selected.excluded is None else {"excluded": selected.excluded.excluded}),
            "files": files,
            "held_out_prompts": held_out,
            **(extra or {}),
        }
        write_card(partial, card)
        with engine.begin() as conn:
            DatasetStore(engine).record(conn, card, final)
            if actor is not None:
                after = {k: card[k] for k in ("kind", "source", "split_rows")}
                audit.record(conn, actor, "dataset.build", "dataset", spec.name, None, after)
            os.rename(partial, final)
            renamed = True
    except BaseException:
        # Not recorded: no files either (renamed but the commit failed: the final folder).
        shutil.rmtree(final if renamed else partial, ignore_errors=True)
        raise
    info = DatasetStore(engine).get(spec.name)
    assert info is not None
    return info


def _write_held_out(folder: Path, splits: dict[str, list[DatasetRow]]) -> str | None:
    """The test split (else validation) as {prompt, reference} lines under eval/: the prompt
    set format of `herd eval --prompts FILE`, to score a student against its teacher on
    rows it was not trained on. None when no such row has an answer."""
    for split in ("test", "validation"):
        rows = [r for r in splits[split] if r.response is not None]
        if rows:
            (folder / "eval").mkdir()
            name = f"eval/{split}.prompts.jsonl"
            with (folder / name).open("w", encoding="utf-8") as out:
                for row in rows:
                    line = {"prompt": [dict(m) for m in row.prompt], "reference": row.response}
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
            return name
    return None


def build_dataset(
    engine: Engine,
    root: Path,
    spec: BuildSpec,
    selected: Selected,
    progress: StepProgress | None = None,
    actor: Actor | None = None,
) -> DatasetInfo:
    """An SFT dataset of the selection's own answers: clean, split, write (audited as
    "dataset.build" when an actor is given)."""
    check_name(engine, root, spec.name)
    rows, steps = clean_selected(selected, spec, answers=True, progress=progress)
    return write_dataset(engine, root, spec, rows, steps, selected, actor=actor)
