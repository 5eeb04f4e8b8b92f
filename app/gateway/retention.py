"""Text retention: prompt and response text (`messages`) older than N days is deleted;
request metrics (`requests`, the rollups) and feedback ratings stay. The delete itself lives
with the request log, the one writer of `messages`."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Engine

from app.gateway.request_log import delete_expired_text

logger = logging.getLogger(__name__)


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
