"""Smaller or faster variants of a model in the store: quantization and layer pruning."""

from app.jobs.kinds import JobKind

# This package's job kind and its handler, for the registry app/cli.py hands to the jobs
# runner; a module path, so starting a job never imports what running it needs.
JOB_HANDLERS: dict[str, str] = {JobKind.QUANTIZE: "app.compress.quantize_job:run"}
