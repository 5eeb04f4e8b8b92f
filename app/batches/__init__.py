"""OpenAI-compatible batches: uploaded JSONL files, batches of their lines, the runner job
that sends each line through the gateway (marked as batch traffic) and commits its answer
with its state, and the output and error files keyed by custom_id.

`files.FileStore` writes `files`; `store.BatchStore` writes `batches` and `batch_requests`;
`runner` is the `batch` job; `routes` is the gateway's /v1/files and /v1/batches;
`service` is the Python API (create from request bodies, wait, read results).
"""

from app.jobs.kinds import JobKind

# This package's job kind and its handler, for the registry app/cli.py hands to the jobs
# runner; a module path, so starting a job never imports what running it needs.
JOB_HANDLERS: dict[str, str] = {JobKind.BATCH: "app.batches.runner:run"}
