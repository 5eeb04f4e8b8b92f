"""Exact-match response cache for deterministic requests (temperature 0 or a fixed seed).

The key covers the alias, the model version that would serve, the endpoint, the normalised
prompt and every sampling parameter; a hit replays the answer without touching a worker.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

# Body fields that change who asks or how the answer travels, not what the answer is.
NOT_IN_KEY = frozenset({"model", "messages", "prompt", "stream", "stream_options", "user"})
# Answers the cache cannot replay faithfully: several choices, logprobs, tool calls.
UNCACHEABLE = frozenset({"logprobs", "top_logprobs", "tools", "functions", "echo", "best_of"})


@dataclass(frozen=True)
class CachedAnswer:
    """What a replay needs: the text and how it ended."""

    text: str
    finish_reason: str
    usage: dict[str, Any]
    model: str
    expires_at: float


def is_cacheable(body: dict[str, Any]) -> bool:
    """Deterministic and replayable: temperature 0 or a seed, one choice, text only."""
    if body.get("n") not in (None, 1):
        return False
    # isdisjoint first: on almost every call none of these fields is there at all.
    if not UNCACHEABLE.isdisjoint(body) and any(body.get(k) for k in UNCACHEABLE):
        return False
    return body.get("temperature") == 0 or body.get("seed") is not None


def _normalise_content(content: Any) -> Any:
    # A list of text parts and the same text as one string mean the same prompt.
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    ):
        return "".join(str(p.get("text", "")) for p in content)
    return content


def cache_key(alias: str, model_id: int | None, endpoint: str, body: dict[str, Any]) -> str:
    if "messages" in body:
        prompt: Any = [
            {**m, "content": _normalise_content(m.get("content"))} if isinstance(m, dict) else m
            for m in body["messages"]
        ]
    else:
        prompt = body.get("prompt")
    params = {k: v for k, v in body.items() if k not in NOT_IN_KEY}
    material = json.dumps(
        [alias, model_id, endpoint, prompt, params], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(material.encode()).hexdigest()


class ResponseCache:
    """Bounded LRU with a TTL per entry."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()

    def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.monotonic() >= entry.expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(
        self,
        key: str,
        *,
        text: str,
        finish_reason: str,
        usage: dict[str, Any],
        model: str,
        ttl_s: float,
    ) -> None:
        if self.max_entries <= 0:
            return
        self._entries[key] = CachedAnswer(
            text=text,
            finish_reason=finish_reason,
            usage=usage,
            model=model,
            expires_at=time.monotonic() + ttl_s,
        )
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
