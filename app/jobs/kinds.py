"""Job kinds and the module that runs each (imported only by the process running the job)."""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.jobs.runner import JobContext


class JobKind(enum.StrEnum):
    QUANTIZE = "quantize"
    EVALUATE = "evaluate"
    BATCH = "batch"
    DATASET = "dataset"  # distillation or augmentation


# Each module defines run(ctx: JobContext) -> dict (the job's result).
_HANDLER_MODULES = {
    JobKind.QUANTIZE: "app.compress.quantize_job",
    JobKind.EVALUATE: "app.evaluation.evaluate_job",
    JobKind.BATCH: "app.batches.runner",
    JobKind.DATASET: "app.datasets.job",
}

Handler = Callable[["JobContext"], dict[str, Any]]


def handler_for(kind: str) -> Handler:
    """The function that runs jobs of this kind; ValueError for an unknown kind."""
    module = importlib.import_module(_HANDLER_MODULES[JobKind(kind)])
    run: Handler = module.run
    return run
