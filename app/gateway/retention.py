"""Text retention: prompt and response text (`messages`) older than N days is deleted;
request metrics (`requests`, the rollups) and feedback ratings stay."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

logger = logging.getLogger(__name__)

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


async def run_retention(engine: Engine, days: float, interval_s: float) -> None:
    """Apply the retention now and every interval_s until cancelled (a gateway task)."""
    while True:
        try:
            deleted = await asyncio.to_thread(delete_expired_text, engine, days)
            if deleted:
                logger.info("text retention: deleted %d messages older than %g days", deleted, days)
        except Exception as exc:  # the database may be away; try again next time
            logger.warning("text retention failed, retrying in %g s: %s", interval_s, exc)
        await asyncio.sleep(interval_s)
