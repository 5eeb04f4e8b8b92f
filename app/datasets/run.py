"""Distillation and augmentation end to end: clean the prompts, send them as one batch
through the Batch API (app.batches.service), turn the results into rows, write the dataset.

The batch runs like any other (lower priority than live traffic, progress in PostgreSQL,
resumable); this process (the `dataset` job's, app.datasets.job) waits for it. Only a
completed batch makes a dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from app.batches.service import (
    BatchResult,
    batch_results,
    create_batch,
    get_batch,
    wait_batch,
)
from app.config import Settings
from app.datasets.build import BuildSpec, check_name, clean_selected, write_dataset
from app.datasets.cleaning import StepProgress, clean
from app.datasets.rows import DatasetError, DatasetKind
from app.datasets.selection import Selected
from app.datasets.store import DatasetInfo
from app.datasets.teacher import (
    GenerationSettings,
    distill_requests,
    distilled_rows,
    paraphrase_requests,
    paraphrased_rows,
)


class BatchStillRunning(TimeoutError):
    """The wait ran out; the batch goes on and a rerun with its id picks it up."""

    def __init__(self, batch_id: str, message: str) -> None:
        super().__init__(f"{message}; rerun the same command with --batch {batch_id} to write "
                         "the dataset from it")  # fmt: skip
        self.batch_id = batch_id


def _resumable(engine: Engine, batch_id: str, spec: BuildSpec, lines: int) -> str:
    """batch_id, if it was made for this dataset from as many lines; DatasetError if not."""
    view = get_batch(engine, batch_id)
    meta = view.metadata or {}
    if (meta.get("dataset"), meta.get("kind"), view.total) != (spec.name, spec.kind.value, lines):
        raise DatasetError(
            f"batch {batch_id} was not made for {spec.kind.value} dataset {spec.name!r} from "
            f"these {lines} lines (it has {view.total}, metadata {meta})"
        )
    return batch_id


def run_batch(
    settings: Settings,
    engine: Engine,
    alias: str,
    ids: Sequence[str],
    bodies: Sequence[dict[str, Any]],
    spec: BuildSpec,
    progress: StepProgress | None = None,
    timeout_s: float | None = None,
    resume: str | None = None,
    on_batch: Callable[[str], None] | None = None,
) -> tuple[str, dict[str, BatchResult]]:
    """Run the bodies as one batch for alias (or pick up batch `resume`, made for the same
    dataset earlier) and wait; (batch id, results by custom id). on_batch hears the batch's
    id before the wait (to name it in a log, or cancel it with the job)."""
    if resume is not None:
        batch_id = _resumable(engine, resume, spec, len(bodies))
    else:
        batch_id = create_batch(
            settings,
            engine,
            alias=alias,
            bodies=bodies,
            custom_ids=ids,
            created_by=spec.created_by,
            metadata={"dataset": spec.name, "kind": spec.kind.value},
        )
    if on_batch is not None:
        on_batch(batch_id)

    def seen(view: Any) -> None:
        if progress is not None:
            progress("batch", int(view.done), int(view.total))

    try:
        view = wait_batch(engine, batch_id, timeout_s=timeout_s, on_progress=seen)
    except TimeoutError as exc:
        raise BatchStillRunning(batch_id, str(exc)) from exc
    if view.status != "completed":
        raise DatasetError(
            f"batch {batch_id} ended {view.status} ({view.completed} of {view.total} lines "
            "answered); nothing was written"
        )
    return batch_id, batch_results(engine, batch_id)


def distill_dataset(
    settings: Settings,
    engine: Engine,
    root: Path,
    spec: BuildSpec,
    selected: Selected,
    teacher: GenerationSettings,
    progress: StepProgress | None = None,
    timeout_s: float | None = None,
    resume: str | None = None,
    on_batch: Callable[[str], None] | None = None,
) -> DatasetInfo:
    """An SFT dataset of the teacher alias's answers to the selection's cleaned prompts."""
    spec = replace(spec, kind=DatasetKind.DISTILL)
    check_name(engine, root, spec.name)
    # The logged answers are not the dataset's: prompts alone are cleaned and deduplicated.
    prompts = replace(selected, rows=[r.with_response(None) for r in selected.rows])
    rows, steps = clean_selected(prompts, spec, answers=False, progress=progress)
    ids, bodies = distill_requests(rows, teacher)
    batch_id, results = run_batch(
        settings, engine, teacher.alias, ids, bodies, spec, progress, timeout_s, resume, on_batch
    )
    answered, dropped = distilled_rows(rows, results, teacher)
    cleaned = clean(answered, spec.cleaning, answers=True, prompts=False, progress=progress)
    steps = [*steps, *dropped, *cleaned.steps]
    if not cleaned.rows:
        cut = sum(s.removed for s in dropped if s.step == "teacher_cut")
        hint = (
            f" ({cut} stopped at max_tokens {teacher.max_tokens}: raise it, or keep them with "
            "--include-cut)"
            if cut
            else ""
        )
        raise DatasetError(
            f"no usable teacher answer in batch {batch_id}{hint}; nothing was written"
        )
    teacher_card = {**teacher.describe(), "batch_id": batch_id, "endpoint": "/v1/chat/completions"}
    return write_dataset(
        engine, root, spec, cleaned.rows, steps, selected, {"teacher": teacher_card}
    )


def augment_dataset(
    settings: Settings,
    engine: Engine,
    root: Path,
    spec: BuildSpec,
    selected: Selected,
    paraphraser: GenerationSettings,
    n: int,
    progress: StepProgress | None = None,
    timeout_s: float | None = None,
    resume: str | None = None,
    on_batch: Callable[[str], None] | None = None,
) -> DatasetInfo:
    """The selection's cleaned rows plus n paraphrases of each prompt by an alias (marked
    synthetic, deduplicated against the originals, in their original's conversation)."""
    spec = replace(spec, kind=DatasetKind.AUGMENT)
    check_name(engine, root, spec.name)
    answers = any(r.response is not None for r in selected.rows)
    rows, steps = clean_selected(selected, spec, answers=answers, progress=progress)
    ids, bodies = paraphrase_requests(rows, n, paraphraser)
    batch_id, results = run_batch(
        settings,
        engine,
        paraphraser.alias,
        ids,
        bodies,
        spec,
        progress,
        timeout_s,
        resume,
        on_batch,
    )
    out, added = paraphrased_rows(rows, results, n, paraphraser, spec.cleaning.near_dup_threshold)
    augmentation = {
        **paraphraser.describe(),
        "n": n,
        "batch_id": batch_id,
        "endpoint": "/v1/chat/completions",
        "paraphrases_kept": len(out) - len(rows),
    }
    return write_dataset(
        engine, root, spec, out, [*steps, *added], selected, {"augmentation": augmentation}
    )
