"""Per-alias request rate limits (requests per minute, per gateway replica)."""

from __future__ import annotations

import math
import time


class TokenBucket:
    """rpm requests per minute, with bursts up to rpm."""

    def __init__(self, rpm: int) -> None:
        self.rpm = rpm
        self.tokens = float(rpm)
        self.updated = time.monotonic()

    def take(self) -> float:
        """0 when the request may go; else the seconds until it could."""
        now = time.monotonic()
        self.tokens = min(self.rpm, self.tokens + (now - self.updated) * self.rpm / 60)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * 60 / self.rpm


class RateLimits:
    """One bucket per alias, rebuilt when its limit changes."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def wait_s(self, alias: str, rpm: int | None) -> int:
        """0 when allowed; else whole seconds to wait (for Retry-After)."""
        if rpm is None:
            self._buckets.pop(alias, None)
            return 0
        bucket = self._buckets.get(alias)
        if bucket is None or bucket.rpm != rpm:
            bucket = self._buckets[alias] = TokenBucket(rpm)
        wait = bucket.take()
        return 0 if wait == 0 else max(1, math.ceil(wait))
