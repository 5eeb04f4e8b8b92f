"""The Python API of batches, for code inside Herd (datasets, the CLI, pages): create a batch
from request bodies for an alias, wait for it, read each line's result by custom_id.

    batch_id = create_batch(settings, engine, alias="teacher", bodies=[{"messages": [...]}])
    view = wait_batch(engine, batch_id, on_progress=lambda v: print(v.done, v.total))
    for custom_id, result in batch_results(engine, batch_id).items():
        if result.ok:
            print(custom_id, result.text)

The batch runs like any other: its runner job sends each line through the gateway at
`settings.gateway_base_url` (so a gateway must be running), marked as batch traffic.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
from sqlalchemy import Engine, select

from app.batches.files import FileStore
from app.batches.jsonl import ENDPOINTS, read_lines
from app.batches.launch import ensure_runner
from app.batches.owner import OPERATOR, Owner
from app.batches.records import BatchError, BatchView
from app.batches.runner import files_root
from app.batches.store import BatchStore
from app.config import Settings
from app.control.audit import Actor
from app.db.tables import BatchRequest


@dataclass(frozen=True)
class BatchResult:
    """One line's outcome: `ok` with the response body (status 200), or the error."""

    custom_id: str
    line: int
    state: str  # succeeded, failed, cancelled, expired
    status_code: int | None
    body: Any  # the endpoint's response (or error) body; None when never sent
    error: Any  # {"code", "message"} for a line never sent (cancelled, expired, bad url)

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"

    @property
    def text(self) -> str | None:
        """The answer's text for chat and text completions (None otherwise)."""
        if not self.ok or not isinstance(self.body, dict):
            return None
        choices = self.body.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        message = choice.get("message")
        if isinstance(message, dict):
            content = message.get("content")
            return content if isinstance(content, str) else None
        text = choice.get("text")
        return text if isinstance(text, str) else None

    @property
    def finish_reason(self) -> str | None:
        """Why the answer stopped (stop, length: cut at max_tokens, ...); None if unknown."""
        if not self.ok or not isinstance(self.body, dict):
            return None
        choices = self.body.get("choices") or []
        choice = choices[0] if choices else None
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        return reason if isinstance(reason, str) else None


def batch_jsonl(
    alias: str,
    bodies: Sequence[dict[str, Any]],
    endpoint: str = "/v1/chat/completions",
    custom_ids: Sequence[str] | None = None,
) -> bytes:
    """The batch input file for these bodies: each body's model set to alias; custom ids
    given, or `line-1`, `line-2`, ..."""
    if custom_ids is not None and len(custom_ids) != len(bodies):
        raise BatchError(f"{len(custom_ids)} custom ids for {len(bodies)} bodies")
    out = io.BytesIO()
    for index, body in enumerate(bodies):
        custom_id = custom_ids[index] if custom_ids is not None else f"line-{index + 1}"
        line = {"custom_id": custom_id, "method": "POST", "url": endpoint,
                "body": {**body, "model": alias}}  # fmt: skip
        out.write(orjson.dumps(line) + b"\n")
    return out.getvalue()


def create_batch(
    settings: Settings,
    engine: Engine,
    *,
    alias: str,
    bodies: Sequence[dict[str, Any]],
    endpoint: str = "/v1/chat/completions",
    custom_ids: Sequence[str] | None = None,
    created_by: str = "herd",
    metadata: dict[str, Any] | None = None,
    owner: Owner = OPERATOR,
    start: bool = True,
    actor: Actor | None = None,
) -> str:
    """Store the bodies as a batch input file, create the batch and (start) its runner; the
    batch id. Raises BatchError or FileError (ValueErrors) naming what is wrong. actor: who
    asked for it, for the audit log (None for a batch of Herd's own jobs)."""
    if endpoint not in ENDPOINTS:
        raise BatchError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
    data = batch_jsonl(alias, bodies, endpoint, custom_ids)
    return create_batch_from_file(
        settings, engine, io.BytesIO(data), filename=f"{alias}.jsonl", endpoint=endpoint,
        created_by=created_by, metadata=metadata, owner=owner, start=start, actor=actor,
    )  # fmt: skip


def create_batch_from_file(
    settings: Settings,
    engine: Engine,
    source: BinaryIO,
    *,
    filename: str,
    endpoint: str = "/v1/chat/completions",
    created_by: str = "herd",
    metadata: dict[str, Any] | None = None,
    owner: Owner = OPERATOR,
    start: bool = True,
    actor: Actor | None = None,
) -> str:
    """Upload a JSONL file (checked line by line) and run it as a batch; the batch id. actor:
    who asked for it, for the audit log (None for a batch of Herd's own jobs)."""
    files = FileStore(engine, files_root(settings))
    uploaded = files.save_upload(
        source, filename=filename, purpose="batch",
        owner=Owner(owner.api_key_id), max_bytes=settings.batch_file_max_bytes,
    )  # fmt: skip
    batch = BatchStore(engine).create(
        endpoint=endpoint, input_file_id=uploaded.id, completion_window="24h",
        lines=read_lines(files.path_of(uploaded.id)), owner=Owner(owner.api_key_id),
        created_by=created_by, gateway_url=settings.gateway_base_url, metadata=metadata,
        actor=actor,
    )  # fmt: skip
    if start:
        ensure_runner(engine, settings, batch.id, None, 0)
    return batch.id


def get_batch(engine: Engine, batch_id: str) -> BatchView:
    return BatchStore(engine).get(batch_id)


def cancel_batch(engine: Engine, batch_id: str, actor: Actor | None = None) -> BatchView:
    """Ask the batch to stop: lines in flight finish, the rest are cancelled (an audit row
    when an actor asked)."""
    return BatchStore(engine).request_cancel(batch_id, OPERATOR, actor)


def wait_batch(
    engine: Engine,
    batch_id: str,
    *,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    on_progress: Callable[[BatchView], None] | None = None,
) -> BatchView:
    """Poll until the batch is final (completed, failed, cancelled, expired); its view.
    TimeoutError after timeout_s (the batch goes on)."""
    store = BatchStore(engine)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        view = store.get(batch_id)
        if on_progress is not None:
            on_progress(view)
        if view.finished:
            return view
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} is still {view.status} after {timeout_s} s")
        time.sleep(poll_s)


def batch_results(engine: Engine, batch_id: str) -> dict[str, BatchResult]:
    """Every finished line of the batch by custom_id (pending lines are left out)."""
    query = (
        select(
            BatchRequest.custom_id,
            BatchRequest.line,
            BatchRequest.state,
            BatchRequest.status_code,
            BatchRequest.response,
            BatchRequest.error,
        )
        .where(BatchRequest.batch_id == batch_id, BatchRequest.state != "pending")
        .order_by(BatchRequest.line)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return {row.custom_id: BatchResult(*row) for row in rows}
