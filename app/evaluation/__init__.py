"""Measured profiles of models: size, memory against the estimate, speed, perplexity."""

from app.jobs.kinds import JobKind

# This package's job kind and its handler, for the registry app/cli.py hands to the jobs
# runner; a module path, so starting a job never imports what running it needs.
JOB_HANDLERS: dict[str, str] = {JobKind.EVALUATE: "app.evaluation.evaluate_job:run"}
