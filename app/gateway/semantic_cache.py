"""The semantic cache: answer a chat call from an earlier answer to a question that means the
same, for aliases that opt in (Routing page: an embedding alias and a similarity threshold).

The gateway embeds the call's last user turn with the alias's embedding alias (through the
workers, as any embeddings call), and looks for the nearest earlier question with the same
alias and scope: everything else the answer depends on (system prompt and earlier turns,
sampling settings) hashed together. Above the threshold the earlier answer is replayed; below
it the call goes to a worker and its answer is stored. Entries live in PostgreSQL (pgvector,
app/gateway/vector_store.py), so every gateway replica shares them.

A cache must never fail a call: when the embedding alias or the database cannot help, the
call is served fresh and the reason logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from app.gateway.cache import NOT_IN_KEY, UNCACHEABLE, _normalise_content
from app.gateway.embedding_calls import EmbeddingCalls
from app.gateway.routing import AliasRoute
from app.gateway.vector_store import CachedEntry, VectorStore
from app.openai_api.errors import ApiError

logger = logging.getLogger(__name__)

# While pgvector is unusable, look again this often (an operator may install it).
RECHECK_S = 60.0
# At most one warning per this many seconds when lookups fail.
WARN_EVERY_S = 30.0


@dataclass(frozen=True)
class Question:
    """The last user turn, and the hash of everything else the answer depends on."""

    text: str
    scope: str


@dataclass
class Lookup:
    """One call's trip to the semantic cache: its question, vector and what was found."""

    alias: str
    question: Question
    vector: npt.NDArray[np.float32]
    hit: CachedEntry | None
    threshold: float

    @property
    def is_hit(self) -> bool:
        return self.hit is not None and self.hit.similarity >= self.threshold


def question_of(body: dict[str, Any]) -> Question | None:
    """The question a chat body asks, or None when its answer cannot be shared (tools,
    several choices, a last turn that is not the user's text)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    if body.get("n") not in (None, 1) or any(body.get(k) for k in UNCACHEABLE):
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    content = _normalise_content(last.get("content"))
    if not isinstance(content, str) or not content.strip():
        return None
    earlier = [
        {"role": m.get("role"), "content": _normalise_content(m.get("content"))}
        for m in messages[:-1]
        if isinstance(m, dict)
    ]
    settings = {k: v for k, v in body.items() if k not in NOT_IN_KEY}
    scope_of = {"earlier": earlier, "settings": settings}
    try:
        raw = orjson.dumps(scope_of, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # integers orjson refuses
        raw = json.dumps(scope_of, sort_keys=True).encode()
    return Question(text=content, scope=hashlib.sha256(raw).hexdigest())


class SemanticCache:
    """Lookups before a call and entries after it; one per gateway process."""

    def __init__(self, store: VectorStore, embeddings: EmbeddingCalls) -> None:
        self.store = store
        self.embeddings = embeddings
        # None: usable. Otherwise why the semantic cache is off (shown in /health and logs).
        self.off_reason: str | None = "not checked yet"
        self._checked_at = -RECHECK_S
        self._warned_at = -WARN_EVERY_S
        self._tasks: set[asyncio.Task[None]] = set()

    async def _usable(self) -> bool:
        now = time.monotonic()
        if self.off_reason is not None and now - self._checked_at >= RECHECK_S:
            self._checked_at = now
            reason = await asyncio.to_thread(self.store.status)
            if reason is not None and reason != self.off_reason:
                logger.warning("the semantic cache is off: %s", reason)
            elif reason is None:
                logger.info("the semantic cache is available (pgvector)")
            self.off_reason = reason
        return self.off_reason is None

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            logger.warning(message, *args)

    async def lookup(self, route: AliasRoute, body: dict[str, Any]) -> Lookup | None:
        """The nearest cached answer for this call (hit or not), or None when the call
        cannot use the cache now."""
        embed_alias = route.settings.semantic_cache_alias
        if embed_alias is None:
            return None
        question = question_of(body)
        if question is None or not await self._usable():
            return None
        try:
            vector = await self.embeddings.embed(embed_alias, question.text)
            hit = await asyncio.to_thread(
                self.store.nearest, route.alias, question.scope, vector.tolist()
            )
        except ApiError as exc:
            self._warn("semantic cache for %r: cannot embed with %r: %s", route.alias,
                       embed_alias, exc.message)  # fmt: skip
            return None
        except Exception as exc:  # the database, mostly: serve fresh
            self._warn("semantic cache for %r: lookup failed: %s", route.alias, exc)
            return None
        return Lookup(
            alias=route.alias,
            question=question,
            vector=vector,
            hit=hit,
            threshold=route.settings.semantic_cache_threshold,
        )

    def remember(
        self,
        lookup: Lookup,
        *,
        answer: str,
        finish_reason: str,
        usage: dict[str, Any],
        model: str,
        request_id: uuid.UUID,
    ) -> None:
        """Store a fresh answer, off the request path."""

        def add() -> None:
            self.store.add(
                alias=lookup.alias,
                scope=lookup.question.scope,
                vector=lookup.vector.tolist(),
                question=lookup.question.text,
                answer=answer,
                finish_reason=finish_reason,
                usage=usage,
                model=model,
                request_id=request_id,
            )

        async def run() -> None:
            try:
                await asyncio.to_thread(add)
            except Exception as exc:
                self._warn("semantic cache for %r: cannot store an answer: %s", lookup.alias, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for entries still being stored (shutdown, tests)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
