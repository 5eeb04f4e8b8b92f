"""Which calls are batch lines: those carrying a batch's id and its runner token, which only
the batch runner holds. A client that sends the batch header without the token is refused,
so nobody can mark calls as batch traffic to leave engagement metrics or borrow another
key's budget. A batch line counts against the key that created the batch, and carries its
line number (X-Herd-Batch-Line), the key app/gateway/batch_lines.py answers it once by."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.batches.store import BatchStore
from app.openai_api.errors import ApiError, unavailable
from app.openai_api.headers import BATCH_LINE_HEADER

BATCH_HEADER = "x-herd-batch"
TOKEN_HEADER = "x-herd-batch-token"
LINE_HEADER = BATCH_LINE_HEADER.lower()
# A batch holds at most this many lines (an int column; a file has far fewer).
MAX_LINE = 2**31 - 1
# How long a checked credential is trusted before it is read again (a finished batch's
# token stops working within this time).
FRESH_S = 5.0


@dataclass(frozen=True)
class Caller:
    """Who a call is from: the API key it counts against, and its batch (if a batch line)."""

    api_key_id: int | None
    batch_id: str | None = None
    # The batch line's number, when the runner sent it (runners before 0022 did not).
    batch_line: int | None = None


class BatchCredentials:
    """Checks batch markings against the batches table, with a short cache; while the
    database is away the last known credential keeps a running batch going."""

    def __init__(self, engine: Engine) -> None:
        self.store = BatchStore(engine)
        self._known: dict[str, tuple[float, tuple[str, int | None] | None]] = {}

    async def check(self, request: Request) -> Caller | None:
        """The batch caller when the call carries a batch marking, else None; raises 403
        for a marking without the batch's runner token."""
        batch_id = request.headers.get(BATCH_HEADER)
        if batch_id is None:
            return None
        token = request.headers.get(TOKEN_HEADER) or ""
        known = await self._credential(batch_id)
        if known is None or not hmac.compare_digest(known[0].encode(), token.encode()):
            raise ApiError(
                403,
                "the X-Herd-Batch header is reserved for Herd's batch runner "
                "(it needs the batch's runner credential); submit work as a batch with "
                "POST /v1/batches",
                type="permission_error",
                code="batch_marking_refused",
            )
        return Caller(api_key_id=known[1], batch_id=batch_id, batch_line=_line(request))

    async def _credential(self, batch_id: str) -> tuple[str, int | None] | None:
        now = time.monotonic()
        cached = self._known.get(batch_id)
        if cached is not None and now - cached[0] < FRESH_S:
            return cached[1]
        try:
            value = await asyncio.to_thread(self.store.credential, batch_id)
        except SQLAlchemyError:
            if cached is not None:
                return cached[1]
            raise unavailable(
                "the database is unavailable; retry shortly", "database_unavailable", 1
            ) from None
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[batch_id] = (now, value)
        return value


def _line(request: Request) -> int | None:
    value = request.headers.get(LINE_HEADER)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_LINE):
        raise ApiError(
            400, f"the {BATCH_LINE_HEADER} header must be a line number from 1 to {MAX_LINE}",
            code="invalid_value", param=BATCH_LINE_HEADER,
        )  # fmt: skip
    return int(value)
