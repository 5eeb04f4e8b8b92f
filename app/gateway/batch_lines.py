"""A batch line reaches the fleet once, even when the runner that sent it dies mid-call.

The batch runner sends each line with its number (X-Herd-Batch-Line, beside the batch's
credential). A runner killed with lines in flight leaves them pending, and the runner that
resumes the batch sends them again. This gateway sends none of them to a worker a second
time: a line in flight here is joined (its call goes on though its first caller is gone),
and a line answered here is answered again from memory for KEEP_S, marked
X-Herd-Batch-Replayed. Neither leaves a second request row.

An answer that settles a line (200, or the client's own 4xx) is also committed to the line,
off the request path and batched (BatchStore.commit_answers): a line answered while its
runner died is done in PostgreSQL too, whichever gateway the next runner reaches. 429 and
5xx answers are neither kept nor committed: the runner retries such a line and counts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from fastapi.responses import Response, StreamingResponse
from sqlalchemy.exc import SQLAlchemyError

from app.batches.records import line_answer, settles
from app.batches.store import BatchStore
from app.openai_api.headers import BATCH_REPLAYED_HEADER

logger = logging.getLogger(__name__)

# How long an answer is kept to be given again: far longer than a runner takes to be found
# dead and started again, by the same host's gateway (seconds) or by heartbeat (a minute).
KEEP_S = 900.0
# At most this much answer text is kept; the oldest answers go first.
KEEP_MAX_BYTES = 64 * 1024 * 1024
# Answers waiting for the database to be committed, at most (a runner alive commits its
# own; one that died left answers kept in memory, given again when asked).
COMMIT_MAX = 10_000

Key = tuple[str, int]


@dataclass(frozen=True)
class _Answer:
    status: int
    content: bytes
    content_type: str
    until: float  # monotonic s

    def response(self) -> Response:
        headers = {"content-type": self.content_type, BATCH_REPLAYED_HEADER: "true"}
        return Response(content=self.content, status_code=self.status, headers=headers)


def _answer(response: Response, keep_s: float) -> _Answer | None:
    """The response as bytes to give again; None for a stream (no batch line is one)."""
    if isinstance(response, StreamingResponse) or not isinstance(response.body, bytes):
        return None
    content_type = response.headers.get("content-type", "application/json")
    return _Answer(response.status_code, response.body, content_type, time.monotonic() + keep_s)


class BatchLines:
    """Calls of batch lines in flight and answered in this gateway process, by line."""

    def __init__(
        self, store: BatchStore, *, commit_s: float, keep_s: float = KEEP_S,
        keep_max_bytes: int = KEEP_MAX_BYTES,
    ) -> None:  # fmt: skip
        self.store = store
        self.commit_s = commit_s
        self.keep_s = keep_s
        self.keep_max_bytes = keep_max_bytes
        self.replayed = 0  # calls answered with another call's answer
        self._flying: dict[Key, asyncio.Task[Response]] = {}
        self._kept: OrderedDict[Key, _Answer] = OrderedDict()
        self._kept_bytes = 0
        self._to_commit: list[tuple[str, int, int, bytes]] = []
        self._commit_failing = False

    async def once(
        self, batch_id: str | None, line: int | None, call: Callable[[], Awaitable[Response]]
    ) -> Response:
        """call()'s answer; for a batch line (batch_id and line) in flight or answered here,
        that call's answer instead of a second call."""
        if batch_id is None or line is None:
            return await call()
        key = (batch_id, line)
        self._forget_old()
        kept = self._kept.get(key)
        if kept is not None:
            self.replayed += 1
            return kept.response()
        task = self._flying.get(key)
        if task is not None:
            # Shielded: this caller going away must not cancel the call others wait for.
            answer = _answer(await asyncio.shield(task), self.keep_s)
            if answer is None:
                return await call()
            self.replayed += 1
            return answer.response()

        async def run() -> Response:
            return await call()

        task = asyncio.create_task(run(), name=f"herd-batch-line-{batch_id}-{line}")
        self._flying[key] = task
        task.add_done_callback(partial(self._landed, key))
        # The call goes on if its runner dies (its connection closes): the answer is kept
        # and committed for the runner that comes next.
        return await asyncio.shield(task)

    def _landed(self, key: Key, task: asyncio.Task[Response]) -> None:
        self._flying.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return
        answer = _answer(task.result(), self.keep_s)
        if answer is None or not settles(answer.status):
            return
        old = self._kept.pop(key, None)
        if old is not None:
            self._kept_bytes -= len(old.content)
        self._kept[key] = answer
        self._kept_bytes += len(answer.content)
        while self._kept_bytes > self.keep_max_bytes and self._kept:
            _, dropped = self._kept.popitem(last=False)
            self._kept_bytes -= len(dropped.content)
        self._to_commit.append((key[0], key[1], answer.status, answer.content))
        if len(self._to_commit) > COMMIT_MAX:
            del self._to_commit[: len(self._to_commit) - COMMIT_MAX]

    def _forget_old(self) -> None:
        now = time.monotonic()
        while self._kept:
            key, oldest = next(iter(self._kept.items()))
            if oldest.until > now:
                return
            del self._kept[key]
            self._kept_bytes -= len(oldest.content)

    # -- committing, off the request path -------------------------------------------------------
    async def run(self) -> None:
        """Commit the answers every commit_s until cancelled."""
        while True:
            await asyncio.sleep(self.commit_s)
            await self.commit()

    async def commit(self) -> None:
        """Commit the settled answers so far to their lines; kept for the next round while
        the database is away."""
        batch, self._to_commit = self._to_commit, []
        if not batch:
            return
        try:
            await asyncio.to_thread(self._commit, batch)
        except SQLAlchemyError as exc:
            self._to_commit = (batch + self._to_commit)[-COMMIT_MAX:]
            if not self._commit_failing:
                logger.warning("cannot commit %d batch answers yet: %s", len(batch), exc)
            self._commit_failing = True
            return
        self._commit_failing = False

    def _commit(self, batch: list[tuple[str, int, int, bytes]]) -> None:
        self.store.commit_answers(
            [(batch_id, line, line_answer(status, content))
             for batch_id, line, status, content in batch]
        )  # fmt: skip
