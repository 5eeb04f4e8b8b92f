"""Reading a worker's SSE stream: its events, whether the answer has started, and what the
chunks carried (text, finish reason, usage, timings) for the request row."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson


class Done:
    """The [DONE] sentinel of an SSE stream."""


DONE = Done()


@dataclass
class StreamState:
    """What a stream has carried so far."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    first_token_at: float | None = None

    def note(self, event: dict[str, Any]) -> None:
        """Take in a chunk's text, finish reason, usage and timings."""
        for choice in event.get("choices") or []:
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if piece:
                self.text.append(piece)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        if event.get("usage") is not None:
            self.usage = event["usage"]
        if event.get("timings") is not None:
            self.timings = event["timings"]


def dumps(value: Any) -> bytes:
    """Compact JSON; orjson for speed, json for what orjson refuses (integers over 64 bits
    in the extra fields a client may send through)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


def has_token(event: dict[str, Any]) -> bool:
    """Has the worker started answering (text, a finish, a tool call)?"""
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        if choice.get("text") or delta.get("content") or delta.get("tool_calls"):
            return True
        if choice.get("finish_reason") is not None:
            return True
    return event.get("usage") is not None


def parse_line(line: str) -> dict[str, Any] | Done | None:
    """An SSE line as an event; None for lines that carry none (blank, comments, fields)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return DONE
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ValueError("an SSE event that is not a JSON object")
    return value


async def next_event(lines: AsyncIterator[str]) -> dict[str, Any] | Done | None:
    """The next event, or None when the stream ended."""
    async for line in lines:
        event = parse_line(line)
        if event is not None:
            return event
    return None
