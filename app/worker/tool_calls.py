"""Tool calls found in a model's answer, as OpenAI's message.tool_calls.

Recognised: <tool_call>{"name": ..., "arguments": {...}}</tool_call> blocks (Herd's format
and many tool-tuned templates'), and an answer that is one JSON object with "name" and
"arguments" (or "parameters", as Llama 3.1 writes it). Anything else is plain content.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def new_call_id() -> str:
    """An id for a tool call, in OpenAI's form."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(value: Any, names: set[str]) -> dict[str, Any] | None:
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": value["name"], "arguments": arguments},
    }


def parse_tool_calls(text: str, names: set[str]) -> tuple[str | None, list[dict[str, Any]]]:
    """(content left over or None, calls) from an answer; no calls: (text, [])."""
    calls: list[dict[str, Any]] = []
    for block in _BLOCK.finditer(text):
        try:
            call = _call(json.loads(block.group(1)), names)
        except ValueError:
            call = None
        if call is None:
            return text, []  # a malformed block: the answer stays text, nothing invented
        calls.append(call)
    if calls:
        rest = _BLOCK.sub("", text).strip()
        return rest or None, calls
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            call = _call(json.loads(stripped), names)
        except ValueError:
            call = None
        if call is not None:
            return None, [call]
    return text, []
