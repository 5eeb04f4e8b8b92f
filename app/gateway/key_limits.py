"""Per-key scopes, rate limits and daily token quotas, held across gateway replicas.

Each replica counts its own calls and tokens per key and minute in memory, and every sync
(HERD_GATEWAY_REFRESH_S) adds them to `api_key_usage` and reads back every replica's totals:
the hot path never waits on the database. A key can therefore run over its limit by what
the other replicas admitted since their last sync (at most one sync interval of traffic);
tokens are counted when an answer ends, so the call that crosses a token limit completes
and the next one is refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from app.openai_api.errors import ApiError

logger = logging.getLogger(__name__)

DAY_S = 86_400


@dataclass(frozen=True)
class KeyRule:
    """What the gateway enforces for one key (only keys with a scope or a limit have one)."""

    scopes: frozenset[str] | None
    rpm: int | None
    tpm: int | None
    daily_tokens: int | None

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.daily_tokens is not None


@dataclass
class _Counts:
    requests: int = 0
    tokens: int = 0


FLUSH_SQL = text(
    """
    INSERT INTO api_key_usage AS u (api_key_id, minute, requests, tokens)
    VALUES (:key_id, :minute, :requests, :tokens)
    ON CONFLICT (api_key_id, minute) DO UPDATE
    SET requests = u.requests + excluded.requests, tokens = u.tokens + excluded.tokens
    """
)
TOTALS_SQL = text(
    """
    SELECT api_key_id,
           coalesce(sum(requests) FILTER (WHERE minute = :minute), 0) AS minute_requests,
           coalesce(sum(tokens) FILTER (WHERE minute = :minute), 0) AS minute_tokens,
           coalesce(sum(tokens), 0) AS day_tokens
    FROM api_key_usage
    WHERE api_key_id = ANY(:ids) AND minute >= :day
    GROUP BY api_key_id
    """
)


def _minute(now: float) -> int:
    return int(now // 60) * 60


def _day(now: float) -> int:
    return int(now // DAY_S) * DAY_S


def _ts(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class KeyLimits:
    """This replica's view of per-key usage: totals from the last sync plus what it counted
    since (pending: not yet sent; in flight: being sent now)."""

    def __init__(self) -> None:
        # key id -> minute -> counts; by key so that a check reads only its own key's.
        self._pending: dict[int, dict[int, _Counts]] = defaultdict(lambda: defaultdict(_Counts))
        self._in_flight: dict[int, dict[int, _Counts]] = {}
        # key id -> (minute, requests this minute, tokens this minute, day, tokens that day)
        self._totals: dict[int, tuple[int, int, int, int, int]] = {}

    def _used(self, key_id: int, now: float) -> tuple[int, int, int]:
        minute, day = _minute(now), _day(now)
        requests = tokens = day_tokens = 0
        total = self._totals.get(key_id)
        if total is not None:
            t_minute, t_requests, t_tokens, t_day, t_day_tokens = total
            if t_minute == minute:
                requests, tokens = t_requests, t_tokens
            if t_day == day:
                day_tokens = t_day_tokens
        for counts in (self._pending, self._in_flight):
            for m, c in counts.get(key_id, {}).items():
                if m == minute:
                    requests += c.requests
                    tokens += c.tokens
                if m >= day:
                    day_tokens += c.tokens
        return requests, tokens, day_tokens

    def admit(self, key_id: int, rule: KeyRule, alias: str, now: float | None = None) -> None:
        """Count the call, or raise 403 (alias out of scope) / 429 (a limit reached)."""
        if rule.scopes is not None and alias not in rule.scopes:
            raise ApiError(
                403,
                f"this API key may not call {alias!r}",
                type="permission_error",
                code="alias_not_in_key_scope",
            )
        if not rule.limited:
            return
        now = time.time() if now is None else now
        requests, tokens, day_tokens = self._used(key_id, now)
        to_next_minute = max(1, math.ceil(_minute(now) + 60 - now))
        if rule.daily_tokens is not None and day_tokens >= rule.daily_tokens:
            raise _too_many(
                f"this API key used its {rule.daily_tokens} tokens for today (UTC)",
                "daily_token_quota_exceeded",
                max(1, math.ceil(_day(now) + DAY_S - now)),
            )
        if rule.rpm is not None and requests >= rule.rpm:
            raise _too_many(
                f"rate limit of {rule.rpm} requests per minute for this API key reached",
                "rate_limit_exceeded",
                to_next_minute,
            )
        if rule.tpm is not None and tokens >= rule.tpm:
            raise _too_many(
                f"rate limit of {rule.tpm} tokens per minute for this API key reached",
                "token_rate_limit_exceeded",
                to_next_minute,
            )
        self._pending[key_id][_minute(now)].requests += 1

    def add_tokens(self, key_id: int, tokens: int, now: float | None = None) -> None:
        """Tokens of an answered call (prompt and completion), counted when it ends."""
        if tokens > 0:
            now = time.time() if now is None else now
            self._pending[key_id][_minute(now)].tokens += tokens

    def sync(self, engine: Engine, key_ids: set[int], now: float | None = None) -> None:
        """Add what this replica counted to api_key_usage and read every replica's totals
        for key_ids (blocking; run it in a thread). On failure the counts are kept."""
        now = time.time() if now is None else now
        if self._in_flight:
            return  # the previous sync is still running
        self._in_flight = dict(self._pending)
        self._pending = defaultdict(lambda: defaultdict(_Counts))
        minute, day = _minute(now), _day(now)
        try:
            with engine.begin() as conn:
                rows = [
                    {"key_id": k, "minute": _ts(m), "requests": c.requests, "tokens": c.tokens}
                    for k, minutes in sorted(self._in_flight.items())
                    for m, c in sorted(minutes.items())
                ]
                if rows:
                    conn.execute(FLUSH_SQL, rows)
                totals = (
                    conn.execute(
                        TOTALS_SQL, {"ids": sorted(key_ids), "minute": _ts(minute), "day": _ts(day)}
                    ).all()
                    if key_ids
                    else []
                )
        except SQLAlchemyError as exc:
            logger.warning("cannot sync API key usage; counting locally meanwhile: %s", exc)
            for k, minutes in self._in_flight.items():
                for m, c in minutes.items():
                    self._pending[k][m].requests += c.requests
                    self._pending[k][m].tokens += c.tokens
            self._in_flight = {}
            return
        self._totals = {
            int(r.api_key_id): (
                minute, int(r.minute_requests), int(r.minute_tokens), day, int(r.day_tokens)
            )
            for r in totals
        }  # fmt: skip
        self._in_flight = {}

    async def run(
        self, engine: Engine, rules: Callable[[], dict[int, KeyRule]], interval_s: float
    ) -> None:
        """Sync forever (cancelled at shutdown); rules() gives the keys to read totals for."""
        while True:
            await asyncio.sleep(interval_s)
            key_ids = {k for k, r in rules().items() if r.limited}
            if key_ids or self._pending:
                try:
                    await asyncio.to_thread(self.sync, engine, key_ids)
                except Exception:  # a surprise must not end the syncing
                    logger.exception("API key usage sync failed")


def _too_many(message: str, code: str, retry_after_s: int) -> ApiError:
    return ApiError(429, message, type="rate_limit_error", code=code, retry_after_s=retry_after_s)
