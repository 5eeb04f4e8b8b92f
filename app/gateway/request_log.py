"""The request log: one `requests` row (and its `messages` row) per call, written in
batches off the request path; spooled to disk while PostgreSQL is unreachable, replayed
when it is back, without duplicates (ON CONFLICT (id) DO NOTHING). When the spool's disk
refuses them too (full), rows wait in memory up to a bound; past it the oldest are dropped,
counted and logged: the only way a request row is lost while the gateway runs.

One writer thread does every write, so batches, replays and spool appends never race.

Fresh batches go in with COPY (one statement per table: psycopg formats the rows in C and
the rollup triggers, statement-level, fire once per batch instead of once per row); a batch
COPY refuses (a row already there, a deleted model) is written again through the
ON CONFLICT path, which is also the one replays of spooled rows take.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from app.analytics.redact import redact_messages, redact_text
from app.control.keys import ApiKeys
from app.db.tables import Message, Request
from app.gateway.spool import Spool

logger = logging.getLogger(__name__)

# Orphaned spool files (of gateways that are gone) are looked for this often.
ORPHAN_SCAN_S = 5.0
# While the database is away, a replay of the own spool is tried this often.
REPLAY_RETRY_S = 1.0


@dataclass
class RequestRecord:
    """Everything the log keeps about one call; filled in as the call goes."""

    id: uuid.UUID
    created_at: datetime
    endpoint: str
    alias: str | None = None
    model_id: int | None = None
    deployment_id: int | None = None
    worker_id: int | None = None
    api_key_id: int | None = None
    session_id: str | None = None
    user_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    # Prompt-lookup drafts the worker decoded for the call, and those it kept.
    drafted_tokens: int | None = None
    accepted_tokens: int | None = None
    queue_ms: float | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    tokens_per_second: float | None = None
    # ok | error (the worker failed or refused) | rejected (429/503 by the gateway) |
    # cancelled (the client went away)
    status: str = "ok"
    http_status: int | None = 200
    error: str | None = None
    cache_hit: bool = False
    # A semantic-cache hit: the similarity of the cached question it answered from.
    cache_similarity: float | None = None
    # The batch this call is a line of (sent by the batch runner with its credential).
    batch_id: str | None = None
    # Its line's number in the batch (the runner sends it; app/gateway/batch_lines.py).
    batch_line: int | None = None
    # Why the answer stopped (stop, length, tool_calls ...), as the worker said.
    finish_reason: str | None = None
    # The prompt as sent (messages or prompt) and the answer text; None when not logged.
    prompt: Any = None
    response: str | None = None
    log_text: bool = True

    def entry(self) -> dict[str, Any]:
        """The JSON-safe form the writer inserts and the spool stores."""
        # Shallow, field by field: dataclasses.asdict deep-copies the prompt, and this runs
        # for every call on the event loop (~9% of the gateway's CPU under load).
        row = {name: getattr(self, name) for name in _ROW_FIELDS}
        prompt, response, log_text = self.prompt, self.response, self.log_text
        row["id"] = str(self.id)
        row["created_at"] = self.created_at.isoformat()
        message = None
        if log_text and prompt is not None:
            message = {"prompt": prompt, "response": response}
        return {"request": row, "message": message}


_ROW_FIELDS = tuple(
    f.name for f in fields(RequestRecord) if f.name not in ("prompt", "response", "log_text")
)


def without_nul(value: Any) -> Any:
    """value with NUL characters replaced in every string: PostgreSQL's text and JSONB
    refuse them, and one such character must not cost the whole row."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def redact_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """entry with emails, phone numbers and card-like numbers in its text replaced."""
    message = entry.get("message")
    if not message:
        return entry
    prompt = message["prompt"]
    if isinstance(prompt, list):
        prompt = redact_messages([m for m in prompt if isinstance(m, dict)])
    elif isinstance(prompt, dict) and "prompt" in prompt:
        text = prompt["prompt"]
        if isinstance(text, str):
            text = redact_text(text)
        elif isinstance(text, list):
            text = [redact_text(t) if isinstance(t, str) else t for t in text]
        prompt = {**prompt, "prompt": text}
    response = message["response"]
    response = redact_text(response) if isinstance(response, str) else response
    return {**entry, "message": {"prompt": prompt, "response": response}}


def _request_params(row: dict[str, Any]) -> dict[str, Any]:
    # Every field, so rows spooled by an older gateway (lacking newer fields) go in one
    # executemany with the others.
    row = without_nul({name: row.get(name) for name in _ROW_FIELDS})
    return {
        **row,
        "id": uuid.UUID(row["id"]),
        "created_at": datetime.fromisoformat(row["created_at"]),
    }


def write_entries(engine: Engine, entries: list[dict[str, Any]]) -> None:
    """Insert entries (RequestRecord.entry() form) in one transaction; rows already there
    are skipped, which is what makes a replay safe."""
    if not entries:
        return
    requests = [_request_params(e["request"]) for e in entries]
    messages = [
        {
            "request_id": uuid.UUID(e["request"]["id"]),
            "prompt": without_nul(e["message"]["prompt"]),
            "response": without_nul(e["message"]["response"]),
            "created_at": datetime.fromisoformat(e["request"]["created_at"]),
        }
        for e in entries
        if e.get("message")
    ]
    with engine.begin() as conn:
        conn.execute(insert(Request).on_conflict_do_nothing(index_elements=["id"]), requests)
        if messages:
            conn.execute(
                insert(Message).on_conflict_do_nothing(index_elements=["request_id"]), messages
            )


_COPY_REQUESTS = f"COPY requests ({', '.join(_ROW_FIELDS)}) FROM STDIN"
_COPY_MESSAGES = "COPY messages (request_id, prompt, response, created_at) FROM STDIN"
# orjson writes a NUL inside a JSON string as this escape, which JSONB refuses as well.
_JSON_NUL = b"\\u0000"


def _text(value: Any) -> Any:
    return value.replace("\x00", "\ufffd") if type(value) is str and "\x00" in value else value


def _json_text(value: Any) -> str:
    try:
        data = orjson.dumps(value)
    except TypeError:
        # What orjson refuses and JSON allows (integers past 64 bits, lone surrogates).
        return json.dumps(without_nul(value))
    if _JSON_NUL in data:  # rare: walk the value only then
        data = orjson.dumps(without_nul(value))
    return data.decode()


def copy_entries(engine: Engine, entries: list[dict[str, Any]]) -> None:
    """Insert entries (RequestRecord.entry() form) with COPY in one transaction. Raises
    IntegrityError when one is already there or refers to a deleted row: then nothing is
    written, and write_entries (ON CONFLICT DO NOTHING) is the way to write them."""
    if not entries:
        return
    with engine.begin() as conn:
        # The psycopg connection under SQLAlchemy's: COPY has no SQLAlchemy form. Its
        # errors are wrapped like SQLAlchemy's own, so callers handle one kind.
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        try:
            with raw.cursor() as cursor:
                # Text format: the ids and timestamps go as the strings the entries hold.
                with cursor.copy(_COPY_REQUESTS) as copy:
                    for entry in entries:
                        row = entry["request"]
                        # .get: rows spooled by an older gateway lack newer fields.
                        copy.write_row([_text(row.get(name)) for name in _ROW_FIELDS])
                with cursor.copy(_COPY_MESSAGES) as copy:
                    for entry in entries:
                        message = entry.get("message")
                        if message:
                            request = entry["request"]
                            copy.write_row(
                                (
                                    request["id"],
                                    _json_text(message["prompt"]),
                                    _text(message["response"]),
                                    request["created_at"],
                                )
                            )
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                conn.invalidate(exc)  # the server went away: never hand this one out again
            raise DBAPIError.instance(_COPY_REQUESTS, None, exc, psycopg.Error) from exc
        except (TypeError, ValueError) as exc:
            # A value COPY cannot encode (a lone surrogate): the row-by-row path decides
            # what to keep of it, as it does for any row the database refuses.
            raise DataError(_COPY_REQUESTS, None, exc) from exc


def write_entries_one_by_one(engine: Engine, entries: list[dict[str, Any]]) -> None:
    """After a batch hit a bad row: write each alone; a row whose model or key was deleted
    meanwhile loses that reference rather than the whole row."""
    for entry in entries:
        try:
            write_entries(engine, [entry])
        except (IntegrityError, DataError):
            request = {**entry["request"], "model_id": None, "api_key_id": None}
            try:
                write_entries(engine, [{**entry, "request": request}])
            except (IntegrityError, DataError) as exc:
                logger.error("dropping request row %s the database refuses: %s", request["id"], exc)


def _no_op() -> None:
    pass


class RequestLog:
    """Collects records on the event loop; a background task hands batches to the writer."""

    def __init__(
        self,
        engine: Engine,
        spool: Spool,
        *,
        flush_s: float,
        batch_rows: int,
        redact: bool = False,
        memory_max_rows: int = 50_000,
    ) -> None:
        self.engine = engine
        self.redact = redact
        self.spool = spool
        self.flush_s = flush_s
        self.batch_rows = batch_rows
        self.database_ok = True
        self.written_rows = 0
        self.memory_max_rows = memory_max_rows
        self.lost_rows = 0  # dropped: database down, spool disk full, memory bound reached
        self.spool_error: str | None = None  # why the last spool write failed, until one works
        self._held: list[dict[str, Any]] = []  # entries neither database nor spool took
        self._next_spool_try = 0.0
        self._buffer: list[RequestRecord] = []
        self._keys_used: set[int] = set()
        self._pending: set[uuid.UUID] = set()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herd-request-log")
        self._next_orphan_scan = 0.0
        self._next_replay = 0.0
        self._keys = ApiKeys(engine)

    # -- on the request path: append only ---------------------------------------------------
    def add(self, record: RequestRecord) -> None:
        self._buffer.append(record)
        self._pending.add(record.id)
        if record.api_key_id is not None:
            self._keys_used.add(record.api_key_id)
        if len(self._buffer) >= self.batch_rows:
            self._wake.set()

    @property
    def pending_rows(self) -> int:
        return len(self._pending)

    @property
    def undelivered_rows(self) -> int:
        """Rows the database did not take while it was away: spooled or held in memory."""
        return self.spool.rows + len(self._held)

    @property
    def held_rows(self) -> int:
        """Rows waiting in memory because the spool's disk refused them."""
        return len(self._held)

    # -- background -------------------------------------------------------------------------
    async def run(self) -> None:
        """Flush every flush_s (or sooner when a batch fills) until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # a surprise must not end request logging
                logger.exception("request log flush failed")

    async def flush(self) -> None:
        """Write (or spool) everything added so far; returns when that is done."""
        batch, self._buffer = self._buffer, []
        keys, self._keys_used = self._keys_used, set()
        idle = not batch and not self.spool.rows and not self._held
        if idle and time.monotonic() < self._next_orphan_scan:
            return
        entries = [r.entry() for r in batch]
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._write, entries, keys)
        finally:
            self._pending.difference_update(r.id for r in batch)

    async def ensure_written(self, request_id: uuid.UUID) -> None:
        """Make sure the row is in the database if it can be (feedback refers to it)."""
        if request_id in self._pending or self.spool.rows or self._held:
            # The row may be in the spool: try the replay now, not when its retry is due, or
            # a vote cast just after the database came back would find no row.
            self._next_replay = 0.0
            await self.flush()
            # The row may be in a batch the background flush is writing right now, and then
            # the flush above had nothing to do: the writer is one thread, so a no-op
            # queued behind that write returns only once it is done.
            await asyncio.get_running_loop().run_in_executor(self._executor, _no_op)

    async def close(self) -> None:
        """Final flush at shutdown; what cannot reach the database stays in the spool."""
        await self.flush()
        self._executor.shutdown(wait=True)
        self.spool.close()
        if self._held:
            self.lost_rows += len(self._held)
            logger.error(
                "stopping with %d request rows that neither the database nor the spool took: "
                "they are lost",
                len(self._held),
            )
            self._held = []

    # -- the writer thread ------------------------------------------------------------------
    def _write(self, entries: list[dict[str, Any]], keys: set[int]) -> None:
        if self.redact:
            # Here, off the event loop, and before the spool: no unredacted text on disk.
            entries = [redact_entry(e) for e in entries]
        # Rows held in memory go first, to keep the order; they stay held (and counted in
        # /health) until the database or the spool has them.
        entries = self._held + entries
        self._replay()
        if self.spool.rows:
            # Still unreachable: keep the order on disk, behind what is already there.
            self._spool(entries)
            return
        try:
            self._insert(entries)
            self._keys.touch(keys)
            self.database_ok = True
            self.written_rows += len(entries)
            self._held = []
            if self.spool_error is not None:
                logger.warning("database back; the rows held in memory are written")
                self.spool_error = None  # the spool is not needed any more
        except SQLAlchemyError as exc:
            if self.database_ok:
                logger.warning("database unreachable; spooling request rows to disk: %s", exc)
            self.database_ok = False
            self._spool(entries)

    def _spool(self, entries: list[dict[str, Any]]) -> None:
        """Append to the spool; when its disk refuses, hold the rows in memory instead."""
        if self.spool_error is not None and time.monotonic() < self._next_spool_try:
            # A full disk rarely frees up within a flush interval; retrying each time would
            # serialize every held row again and again for nothing.
            self._hold(entries, None)
            return
        try:
            self.spool.append(entries)
        except OSError as exc:
            self._next_spool_try = time.monotonic() + REPLAY_RETRY_S
            self._hold(entries, exc)
            return
        self._held = []
        if self.spool_error is not None:
            logger.warning("the spool takes request rows again (it had: %s)", self.spool_error)
            self.spool_error = None

    def _hold(self, entries: list[dict[str, Any]], exc: OSError | None) -> None:
        if exc is not None and self.spool_error is None:
            logger.error(
                "CANNOT SPOOL REQUEST ROWS to %s (%s) while the database is unreachable: "
                "holding up to %d rows in memory; beyond that, and at shutdown, rows are lost",
                self.spool.directory,
                exc,
                self.memory_max_rows,
            )
        if exc is not None:
            self.spool_error = str(exc)
        overflow = len(entries) - self.memory_max_rows
        if overflow > 0:
            self.lost_rows += overflow
            entries = entries[overflow:]
            logger.error(
                "DROPPED %d request rows (database unreachable, spool disk full, memory bound "
                "of %d rows reached); %d lost since the gateway started",
                overflow,
                self.memory_max_rows,
                self.lost_rows,
            )
        self._held = entries

    def _insert(self, entries: list[dict[str, Any]]) -> None:
        """Write a batch: COPY first; rows COPY refuses go through the ON CONFLICT path."""
        try:
            copy_entries(self.engine, entries)
        except (IntegrityError, DataError):
            self._insert_again(entries)

    def _insert_again(self, entries: list[dict[str, Any]]) -> None:
        """Write rows that may be in the database already (replays, a refused COPY)."""
        try:
            write_entries(self.engine, entries)
        except (IntegrityError, DataError):
            write_entries_one_by_one(self.engine, entries)

    def _replay(self) -> None:
        now = time.monotonic()
        if self.spool.rows:
            if now < self._next_replay:
                return
            rows = self.spool.read_own()
            try:
                self._insert_again(rows)
            except SQLAlchemyError:
                self._next_replay = now + REPLAY_RETRY_S
                return
            self.spool.clear_own()
            self.database_ok = True
            self.written_rows += len(rows)
            logger.info("database back; replayed %d spooled request rows", len(rows))
        if now >= self._next_orphan_scan:
            self._next_orphan_scan = now + ORPHAN_SCAN_S
            for path in self.spool.orphans():
                try:
                    self.spool.replay_orphan(path, self._insert_again)
                except SQLAlchemyError as exc:
                    logger.warning("could not replay %s yet: %s", path.name, exc)
                    return


# Rows per DELETE: short transactions that do not hold locks on a large table for long.
BATCH_ROWS = 10_000

DELETE_BATCH_SQL = text("""
    DELETE FROM messages WHERE request_id IN (
      SELECT request_id FROM messages WHERE created_at < :cutoff LIMIT :batch
    )
""")


def delete_expired_text(engine: Engine, days: float, now: datetime | None = None) -> int:
    """Delete `messages` rows created more than days ago; how many were deleted."""
    if days <= 0:
        raise ValueError("the retention must be a positive number of days")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    deleted = 0
    while True:
        with engine.begin() as conn:
            n = conn.execute(DELETE_BATCH_SQL, {"cutoff": cutoff, "batch": BATCH_ROWS}).rowcount
        deleted += n
        if n < BATCH_ROWS:
            return deleted
