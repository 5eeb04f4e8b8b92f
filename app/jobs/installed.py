"""The job kinds this installation runs, for `herd jobs run` until app/cli.py builds the
registry from the kind packages' own declarations and hands it to run_job: the one file of
app/jobs that names a kind's code, as module paths (app/jobs/kinds.py), never as an import."""

from __future__ import annotations

from app.jobs.kinds import JobKind, JobKinds


def installed_kinds() -> JobKinds:
    """Each kind's handler: a module whose run(ctx) -> dict runs one job."""
    return JobKinds(
        {
            JobKind.QUANTIZE: "app.compress.quantize_job:run",
            JobKind.EVALUATE: "app.evaluation.evaluate_job:run",
            JobKind.BATCH: "app.batches.runner:run",
            JobKind.DATASET: "app.datasets.job:run",
        }
    )
