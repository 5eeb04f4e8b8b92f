"""OpenAI-shaped answers the gateway writes itself: replays of cached responses."""

from __future__ import annotations

import json
import time
from typing import Any

from app.gateway.cache import CachedAnswer

CHAT = "chat.completions"


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sse(value: dict[str, Any]) -> bytes:
    return b"data: " + _dump(value) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def cached_body(endpoint: str, response_id: str, answer: CachedAnswer) -> dict[str, Any]:
    """A non-streamed completion carrying the cached answer."""
    if endpoint == CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "logprobs": None,
            "finish_reason": answer.finish_reason,
        }
        kind = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": answer.text,
            "logprobs": None,
            "finish_reason": answer.finish_reason,
        }
        kind = "text_completion"
    return {
        "id": response_id,
        "object": kind,
        "created": int(time.time()),
        "model": answer.model,
        "choices": [choice],
        "usage": answer.usage,
    }


def cached_chunks(
    endpoint: str, response_id: str, answer: CachedAnswer, include_usage: bool
) -> list[bytes]:
    """The cached answer as SSE events, [DONE] included."""
    created = int(time.time())
    chat = endpoint == CHAT
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice: dict[str, Any] | None, **extra: Any) -> bytes:
        body: dict[str, Any] = {
            "id": response_id,
            "object": kind,
            "created": created,
            "model": answer.model,
            "choices": [] if choice is None else [{"index": 0, "logprobs": None, **choice}],
            **extra,
        }
        return sse(body)

    if chat:
        events = [
            chunk({"delta": {"role": "assistant", "content": ""}, "finish_reason": None}),
            chunk({"delta": {"content": answer.text}, "finish_reason": None}),
            chunk({"delta": {}, "finish_reason": answer.finish_reason}),
        ]
    else:
        events = [
            chunk({"text": answer.text, "finish_reason": None}),
            chunk({"text": "", "finish_reason": answer.finish_reason}),
        ]
    if include_usage:
        events.append(chunk(None, usage=answer.usage))
    events.append(SSE_DONE)
    return events
