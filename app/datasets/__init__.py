"""Datasets for retraining: select prompts, clean them, split them, distill and augment them.

Files live under HERD_HOME/datasets/<name>/ (JSONL per split and a dataset card); the
`datasets` table (written by store.py alone) lists them.
"""

from app.jobs.kinds import JobKind

# This package's job kind and its handler, for the registry app/cli.py hands to the jobs
# runner; a module path, so starting a job never imports what running it needs.
JOB_HANDLERS: dict[str, str] = {JobKind.DATASET: "app.datasets.job:run"}
