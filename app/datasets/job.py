"""The `dataset` job: distillation or augmentation in a background process (`herd jobs run`),
so the page or command that starts it returns at once and the work outlives it.

The job selects the prompts (the request log, or a file saved when the job started),
cleans them, sends them as one batch and writes the dataset (app.datasets.run); its
progress (mostly the batch's) and log tail are in the `jobs` row, which pages and the CLI
read. The batch is resumable like any other: a job that failed while its batch ran on names
the batch in its log, and `--batch ID` picks it up. Cancelling the job cancels its batch.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from app.config import Settings
from app.control.audit import Actor
from app.datasets.build import BuildSpec, check_name, datasets_root
from app.datasets.cleaning import CleaningOptions, StepProgress
from app.datasets.rows import DatasetError, DatasetKind
from app.datasets.selection import LogSelection, Rating, Selected, read_upload, select_from_log
from app.datasets.splits import SplitRatios
from app.datasets.teacher import GenerationSettings
from app.jobs.kinds import JobKind
from app.jobs.spawn import spawn_job
from app.jobs.store import JobStore

if TYPE_CHECKING:
    from app.jobs.runner import JobContext

# The batch is most of the work: it moves the bar from BEFORE_BATCH to AFTER_BATCH.
BEFORE_BATCH, AFTER_BATCH = 0.05, 0.95


@dataclass(frozen=True)
class DatasetJobRequest:
    """Everything a distillation or augmentation job needs, kept in the job's params."""

    spec: BuildSpec
    generation: GenerationSettings
    n: int = 3  # paraphrases per prompt (augmentation)
    selection: LogSelection | None = None  # prompts from the request log ...
    upload: Path | None = None  # ... or from this .jsonl / .csv file
    upload_name: str | None = None  # the file's name as uploaded (recorded on the card)
    resume: str | None = None  # the id of a batch an earlier run left

    def params(self) -> dict[str, Any]:
        spec = self.spec
        selection = None
        if self.selection is not None:
            selection = {
                **asdict(self.selection),
                "start": _iso(self.selection.start),
                "end": _iso(self.selection.end),
            }
        return {
            "target": spec.name,
            "dataset": {
                "name": spec.name,
                "created_by": spec.created_by,
                "kind": spec.kind.value,
                "cleaning": asdict(spec.cleaning),
                "ratios": asdict(spec.ratios),
                "seed": spec.seed,
            },
            "generation": self.generation.describe(),
            "n": self.n,
            "selection": selection,
            "upload": None if self.upload is None else str(self.upload),
            "upload_name": self.upload_name,
            "resume": self.resume,
        }

    @classmethod
    def of(cls, params: dict[str, Any]) -> DatasetJobRequest:
        d = params["dataset"]
        cleaning = {**d["cleaning"], "languages": tuple(d["cleaning"]["languages"])}
        spec = BuildSpec(
            name=d["name"],
            created_by=d["created_by"],
            kind=DatasetKind(d["kind"]),
            cleaning=CleaningOptions(**cleaning),
            ratios=SplitRatios(**d["ratios"]),
            seed=int(d["seed"]),
        )
        selection = None
        if params.get("selection") is not None:
            s = params["selection"]
            selection = LogSelection(
                start=_time(s["start"]),
                end=_time(s["end"]),
                aliases=tuple(s["aliases"]),
                model_ids=tuple(s["model_ids"]),
                rating=Rating(s["rating"]),
                tags=tuple(s["tags"]),
                include_synthetic=bool(s["include_synthetic"]),
                include_cut=bool(s.get("include_cut", False)),
                limit=s["limit"],
            )
        upload = params.get("upload")
        return cls(
            spec=spec,
            generation=GenerationSettings(**params["generation"]),
            n=int(params["n"]),
            selection=selection,
            upload=None if upload is None else Path(upload),
            upload_name=params.get("upload_name"),
            resume=params.get("resume"),
        )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def uploads_dir(settings: Settings) -> Path:
    """Where a file uploaded on the page waits for the job that reads it."""
    return settings.home_dir / "uploads"


def save_upload(settings: Settings, name: str, data: bytes) -> Path:
    """Check an uploaded file (DatasetError, line by line, if it is bad) and keep it for the
    job; the path (the job removes it when it ends)."""
    read_upload(name, data)
    folder = uploads_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)[-80:]
    path = folder / f"{uuid.uuid4().hex[:12]}-{safe}"
    path.write_bytes(data)
    return path


def start_dataset_job(
    settings: Settings,
    engine: Engine,
    request: DatasetJobRequest,
    actor: Actor,
    *,
    upload_is_scratch: bool = False,
) -> int:
    """Check the request, queue its job (a "dataset.distill" or "dataset.augment" audit row)
    and start the job's process; the job id. With upload_is_scratch the upload file is
    removed when the job ends."""
    if request.spec.kind not in (DatasetKind.DISTILL, DatasetKind.AUGMENT):
        raise DatasetError("a dataset job distills or augments (build an SFT dataset directly)")
    if (request.selection is None) == (request.upload is None):
        raise DatasetError("take the prompts from the request log or from a file, not both")
    if request.spec.kind is DatasetKind.AUGMENT and not 1 <= request.n <= 20:
        raise DatasetError("paraphrases per prompt: 1 to 20")
    check_name(engine, datasets_root(settings.home_dir), request.spec.name)
    jobs = JobStore(engine)
    action = f"dataset.{request.spec.kind.value}"
    job_id = jobs.start(JobKind.DATASET, request.params(), actor, action)
    if upload_is_scratch and request.upload is not None:
        jobs.add_scratch(job_id, request.upload)
    spawn_job(settings, job_id)
    return job_id


def _progress(ctx: JobContext) -> StepProgress:
    """Steps before the batch fill the first few percent, the batch the most of the bar."""
    seen: list[str] = []

    def update(step: str, done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        if step not in seen:
            seen.append(step)
            ctx.log(f"{step}: {total} rows")
        if step == "batch":
            ctx.set_progress(BEFORE_BATCH + (AFTER_BATCH - BEFORE_BATCH) * fraction)
        elif "batch" not in seen:
            ctx.set_progress(max(ctx.progress, BEFORE_BATCH * fraction))

    return update


def _selected(ctx: JobContext, request: DatasetJobRequest, progress: StepProgress) -> Selected:
    if request.upload is not None:
        try:
            data = request.upload.read_bytes()
        except OSError as exc:
            raise DatasetError(
                f"the prompt file {request.upload} is gone ({exc.strerror}); upload it again"
            ) from exc
        return read_upload(request.upload_name or request.upload.name, data)
    assert request.selection is not None
    return select_from_log(ctx.db.engine, request.selection, lambda d, t: progress("select", d, t))


def run(ctx: JobContext) -> dict[str, Any]:
    """The `dataset` job's handler: build the distilled or augmented dataset."""
    from app.batches.files import FileError
    from app.batches.records import BatchError
    from app.batches.service import cancel_batch
    from app.datasets.run import augment_dataset, distill_dataset
    from app.jobs.runner import JobFailed

    request = DatasetJobRequest.of(ctx.params)
    spec = request.spec
    engine = ctx.db.engine
    root = datasets_root(ctx.settings.home_dir)
    progress = _progress(ctx)

    def batch_started(batch_id: str) -> None:
        ctx.log(f"batch {batch_id} for alias {request.generation.alias!r}")
        # Cancelling the job stops its batch too: it would keep the fleet busy for nothing.
        # (A batch that ended meanwhile refuses: the hook's error is only logged.)
        ctx.on_cancel(lambda: cancel_batch(engine, batch_id))

    try:
        selected = _selected(ctx, request, progress)
        ctx.check_cancel()
        if spec.kind is DatasetKind.DISTILL:
            info = distill_dataset(
                ctx.settings, engine, root, spec, selected, request.generation, progress,
                resume=request.resume, on_batch=batch_started,
            )  # fmt: skip
        else:
            info = augment_dataset(
                ctx.settings, engine, root, spec, selected, request.generation, request.n,
                progress, resume=request.resume, on_batch=batch_started,
            )  # fmt: skip
    except (DatasetError, BatchError, FileError) as exc:
        raise JobFailed(str(exc)) from exc
    ctx.set_progress(1.0)
    return {
        "dataset": info.name,
        "kind": info.kind,
        "rows": info.rows,
        "splits": info.split_rows,
        "path": str(info.path),
    }
