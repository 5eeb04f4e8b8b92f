"""The `batch` job: send a batch's pending lines through the gateway, a few at a time, and
commit each answer with the line's state; then write the output and error files.

Everything it knows is in PostgreSQL: a runner started again (its process was killed, the
job restarted) reads the lines still pending and goes on. Each call goes to the gateway like
a client's (routing, balancing, the owner key's limits and the request log apply), carrying
the batch's runner credential, so the gateway marks it as batch traffic.

Faults: an unreachable gateway and 429/503 answers are waited out with backoff, without
counting against the line; a 5xx (a worker died mid-answer) is retried up to
HERD_BATCH_MAX_ATTEMPTS; PostgreSQL away: the runner holds the answers it has and retries
the commit until the database is back. A line's answer committed is never asked again.

A line reaches the fleet once: each call carries the line's number, and the line is marked
sent just before it. A line still marked when a runner picks it up (its runner died, or the
connection broke, before the answer came) is sent again with its number: the gateway that
has the earlier call in flight or answered gives that answer (app/gateway/batch_lines.py),
and one that has not sends it to the fleet again, which is counted in `attempts` when the
request log holds the earlier call (it reached the fleet).

A runner does not outlive its parts: after HERD_BATCH_GIVE_UP_S without a database (calls
failing or hanging), or without a gateway that accepts a connection, it ends, and the
batch stays resumable: a gateway's watch starts a new runner once both are back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy.exc import SQLAlchemyError

from app.batches.files import FileStore
from app.batches.records import LineAnswer, PendingLine, RunnerInfo, line_answer
from app.batches.store import BatchStore
from app.config import Settings
from app.jobs.runner import JobContext, JobFailed
from app.openai_api.headers import BATCH_LINE_HEADER, BATCH_REPLAYED_HEADER

log = logging.getLogger(__name__)

T = TypeVar("T")

# The headers that mark a call as a batch line; the gateway accepts them only with the
# batch's runner token.
BATCH_HEADER = "X-Herd-Batch"
TOKEN_HEADER = "X-Herd-Batch-Token"
BACKOFF_MAX_S = 10.0
# A line's call may take this long (generation included) before it counts as failed.
CALL_TIMEOUT_S = 600.0
POLL_S = 0.5
# With nothing in flight the loop sleeps until the next retry is due, at most this long:
# a runner waiting out a fault polls PostgreSQL about once a second, not ten times.
IDLE_MAX_S = 1.0
# How often the give-up clock is read.
WATCH_S = 1.0
# Exit status of a runner that ended because its database was gone (nothing can be recorded).
NO_DATABASE_EXIT = 4


def files_root(settings: Settings) -> Path:
    """Where uploaded batch files live."""
    return settings.home_dir / "files"


@dataclass
class _Retry:
    """A line waiting to be sent again, not before `at` (monotonic seconds)."""

    at: float
    attempts: int
    # Times the line waited for a gateway that did not answer (backoff grows with them).
    waits: int = 0


class BatchRunner:
    """Runs one batch to its end in this process."""

    def __init__(
        self,
        settings: Settings,
        store: BatchStore,
        files: FileStore,
        batch_id: str,
        report: Callable[[int, int], None],
        note: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.files = files
        self.batch_id = batch_id
        self.report = report
        self.note = note
        self.in_flight: dict[int, asyncio.Task[None]] = {}
        self.waiting: dict[int, _Retry] = {}
        # The give-up clocks (monotonic s): one for the whole runner, not one per call, so
        # retries of different calls, or a call that never returns, cannot keep it alive.
        self.db_ok_at = self.gateway_ok_at = time.monotonic()
        self.db_waiting = 0  # db() calls not through yet (failing, or hanging in a connect)
        self.gateway_refused = False  # the latest connection to the gateway failed
        self.gateway_gone = False

    async def db(self, call: Callable[..., T], *args: Any) -> T:
        """call(*args) on a thread, retried with backoff while PostgreSQL is away (the
        watchdog ends the process once it has been away HERD_BATCH_GIVE_UP_S)."""
        delay = 0.5
        self.db_waiting += 1
        try:
            while True:
                try:
                    result = await asyncio.to_thread(call, *args)
                except SQLAlchemyError as exc:
                    self.note(f"database unavailable ({type(exc).__name__}); "
                              f"retrying in {delay:g} s")  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                self.db_ok_at = time.monotonic()
                return result
        finally:
            self.db_waiting -= 1

    async def _watchdog(self) -> None:
        """End a runner whose database or gateway has been gone HERD_BATCH_GIVE_UP_S, rather
        than linger after `herd up` or a test ended (and keep an embedded PostgreSQL up)."""
        give_up_s = self.settings.batch_give_up_s
        while True:
            await asyncio.sleep(min(WATCH_S, give_up_s / 4))
            now = time.monotonic()
            if self.db_waiting and now - self.db_ok_at > give_up_s:
                # Nothing can be recorded: the job row goes stale, a gateway's watch reaps
                # it and starts a new runner when the database is back.
                log.error("batch %s: no database for %g s; the runner ends (the batch resumes "
                          "with a new runner)", self.batch_id, give_up_s)  # fmt: skip
                os._exit(NO_DATABASE_EXIT)
            if self.gateway_refused and now - self.gateway_ok_at > give_up_s:
                self.gateway_gone = True  # the loop stops sending; run() ends the job

    async def run(self) -> dict[str, Any]:
        watchdog = asyncio.create_task(self._watchdog())
        try:
            return await self._run()
        finally:
            watchdog.cancel()

    async def _run(self) -> dict[str, Any]:
        info: RunnerInfo = await self.db(self.store.runner_info, self.batch_id)
        await self.db(self.store.start, self.batch_id)
        limits = httpx.Limits(max_connections=self.settings.batch_concurrency + 2)
        headers = {BATCH_HEADER: self.batch_id, TOKEN_HEADER: info.runner_token}
        # HERD_GATEWAY_URL, when set, names the gateways' shared address (a Kubernetes
        # service): better than the one replica the batch was created on, which may be gone.
        base_url = self.settings.gateway_url or info.gateway_url
        async with httpx.AsyncClient(
            base_url=base_url.rstrip("/").removesuffix("/v1"), headers=headers, limits=limits,
            timeout=httpx.Timeout(CALL_TIMEOUT_S, connect=5.0),
        ) as client:  # fmt: skip
            gave_up = await self._loop(client, info)
        if gave_up:
            raise JobFailed(
                f"no gateway at {base_url} accepted a connection for "
                f"{self.settings.batch_give_up_s:g} s; the batch stays in progress and a new "
                "runner resumes it once a gateway runs again"
            )
        view = await self.db(self.store.finalize, self.batch_id, self.files)
        self.report(view.done, view.total)
        self.note(f"batch {view.status}: {view.completed} completed, {view.failed} failed")
        return {"batch_id": self.batch_id, "status": view.status,
                "completed": view.completed, "failed": view.failed}  # fmt: skip

    async def _loop(self, client: httpx.AsyncClient, info: RunnerInfo) -> bool:
        """Send lines until none is pending or the batch is cancelled or expired; True when
        it stopped because the gateway is gone (a cancel or expiry is finalized without one)."""
        next_progress = 0.0
        while True:
            status = await self.db(self.store.status, self.batch_id)
            ended = status != "in_progress" or datetime.now(UTC) >= info.expires_at
            stopping = ended or self.gateway_gone
            if not stopping:
                await self._fill(client)
            idle = not self.in_flight and (stopping or not self.waiting)
            if idle and (stopping or not await self._any_pending()):
                break
            if time.monotonic() >= next_progress:
                done, total = await self.db(self.store.counts, self.batch_id)
                self.report(done, total)
                next_progress = time.monotonic() + 1.0
            if self.in_flight:
                await asyncio.wait(
                    list(self.in_flight.values()), timeout=POLL_S,
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
            else:
                await asyncio.sleep(self._idle_s())
        # Cancelled or expired: the lines in flight finish and are committed first.
        if self.in_flight:
            await asyncio.gather(*self.in_flight.values(), return_exceptions=True)
        return self.gateway_gone and not ended and await self._any_pending()

    def _idle_s(self) -> float:
        """Nothing in flight: how long to sleep, until the next waiting line is due."""
        if not self.waiting:
            return POLL_S / 5
        due_s = min(retry.at for retry in self.waiting.values()) - time.monotonic()
        return min(max(due_s, POLL_S / 5), IDLE_MAX_S)

    async def _any_pending(self) -> bool:
        return bool(await self.db(self.store.pending, self.batch_id, set(), 1))

    async def _fill(self, client: httpx.AsyncClient) -> None:
        room = self.settings.batch_concurrency - len(self.in_flight)
        if room <= 0:
            return
        now = time.monotonic()
        not_yet = {line for line, retry in self.waiting.items() if retry.at > now}
        lines = await self.db(
            self.store.pending, self.batch_id, set(self.in_flight) | not_yet, room
        )
        if lines:
            # Marked before they go: a runner that dies with them in flight leaves them
            # marked, and the next one asks for their answers before sending them again.
            await self.db(self.store.mark_sent, self.batch_id, [line.line for line in lines])
        for line in lines:
            retry = self.waiting.pop(line.line, None)
            attempts = max(line.attempts, retry.attempts if retry else 0)
            waits = retry.waits if retry else 0
            task = asyncio.create_task(self._send(client, line, attempts, waits))
            self.in_flight[line.line] = task
            task.add_done_callback(self._landed(line.line))

    def _landed(self, line: int) -> Callable[[asyncio.Task[None]], None]:
        def forget(task: asyncio.Task[None]) -> None:
            self.in_flight.pop(line, None)
            if not task.cancelled() and task.exception() is not None:
                # Not a fault the runner knows: the line stays pending and is tried again
                # later, not at once in a loop.
                self.note(f"line {line}: {task.exception()!r}; it stays pending")
                self.waiting[line] = _Retry(time.monotonic() + BACKOFF_MAX_S, 0)

        return forget

    def _later(self, line: PendingLine, attempts: int, delay_s: float, waits: int = 0) -> None:
        self.waiting[line.line] = _Retry(time.monotonic() + delay_s, attempts, waits)

    async def _send(
        self, client: httpx.AsyncClient, line: PendingLine, attempts: int, waits: int
    ) -> None:
        backoff = min(BACKOFF_MAX_S, 0.5 * 2 ** min(attempts, 5))
        # A line marked sent: an earlier call's answer never came back. Its calls so far are
        # counted before this one goes out (it may reach the log at any time after).
        logged = 0
        if line.sent:
            logged = await self.db(self.store.logged_calls, self.batch_id, line.line)
        try:
            answer = await client.post(
                line.url, json=line.body, headers={BATCH_LINE_HEADER: str(line.line)}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Nobody listens at the gateway's address: the give-up clock runs.
            self.gateway_refused = True
            self.note(f"line {line.line}: gateway unreachable ({type(exc).__name__}); retrying")
            await self._not_sent(line)
            self._later(line, attempts, min(5.0, 0.5 * 2 ** min(waits, 4)), waits + 1)
            return
        except httpx.TransportError as exc:
            # The gateway is restarting or unreachable: not the line's fault, not counted
            # now. The call may have reached the fleet: the line stays marked sent, and its
            # next call asks for this one's answer.
            self.note(f"line {line.line}: gateway unreachable ({type(exc).__name__}); retrying")
            self._later(line, attempts, min(5.0, 0.5 * 2 ** min(waits, 4)), waits + 1)
            return
        self.gateway_ok_at, self.gateway_refused = time.monotonic(), False
        status = answer.status_code
        if status in (429, 503):
            await self._not_sent(line)
            retry_after = _retry_after(answer.headers.get("retry-after"))
            self._later(line, attempts, min(BACKOFF_MAX_S, retry_after or backoff))
            return
        attempts += 1
        result = line_answer(status, answer.content, answer.headers.get("x-request-id"))
        if line.sent and BATCH_REPLAYED_HEADER.lower() not in answer.headers:
            # The gateway had no answer to give: the line went to the fleet again. The
            # earlier calls the request log holds reached the fleet too.
            if logged + 1 > attempts:
                self.note(f"line {line.line}: sent again, the answer of its earlier call "
                          f"lost ({logged} earlier calls logged)")  # fmt: skip
            attempts = max(attempts, logged + 1)
        if status >= 500 and attempts < self.settings.batch_max_attempts:
            self.note(f"line {line.line}: HTTP {status} (attempt {attempts}); retrying")
            await self.db(self.store.count_attempt, self.batch_id, line.line, attempts)
            self._later(line, attempts, backoff)
            return
        await self.db(_record, self.store, self.batch_id, line.line, attempts, result)

    async def _not_sent(self, line: PendingLine) -> None:
        """This call of the line reached no worker: unmark the line, unless an earlier
        call's outcome is still unknown."""
        if not line.sent:
            await self.db(self.store.clear_sent, self.batch_id, line.line)


def _record(store: BatchStore, batch_id: str, line: int, attempts: int, result: LineAnswer) -> bool:
    return store.record(
        batch_id, line, state=result.state, attempts=attempts, status_code=result.status_code,
        request_id=result.request_id, response=result.body,
    )  # fmt: skip


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.1, float(value)) if value else None
    except ValueError:
        return None


def run(ctx: JobContext) -> dict[str, Any]:
    """The `batch` job's handler: run the batch named in the job's params to its end."""
    batch_id = str(ctx.params["batch_id"])
    store = BatchStore(ctx.db.engine)
    files = FileStore(ctx.db.engine, files_root(ctx.settings))

    def report(done: int, total: int) -> None:
        ctx.set_progress(done / total if total else 1.0)

    runner = BatchRunner(ctx.settings, store, files, batch_id, report, ctx.log)
    return asyncio.run(runner.run())
