"""Tools in the chat prompt: through the GGUF's own chat template when it knows tools, else
in Herd's format (Hermes-style <tool_call> blocks, which many tool-tuned templates use too).

A template "knows tools" when rendering with the tools changes its output. Otherwise a system
message lists the tools and asks for calls as <tool_call>{"name": ..., "arguments": {...}}
</tool_call>, and assistant turns that made calls are written back in that form.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from app.engine.requests import ChatMessage

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

Render = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], str]


def message_dicts(messages: tuple[ChatMessage, ...], native: bool) -> list[dict[str, Any]]:
    """Messages as a chat template reads them; calls as text unless the template is native."""
    out: list[dict[str, Any]] = []
    for m in messages:
        entry: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.name is not None:
            entry["name"] = m.name
        if m.tool_call_id is not None:
            entry["tool_call_id"] = m.tool_call_id
        if m.tool_calls is not None:
            calls = json.loads(m.tool_calls)
            if native:
                entry["tool_calls"] = calls
            else:
                written = [
                    CALL_OPEN
                    + json.dumps(
                        {"name": c["function"]["name"], "arguments": _arguments(c)},
                        ensure_ascii=False,
                    )
                    + CALL_CLOSE
                    for c in calls
                ]
                entry["content"] = "\n".join([m.content, *written] if m.content else written)
        out.append(entry)
    return out


def _arguments(call: dict[str, Any]) -> Any:
    text = call["function"].get("arguments", "{}")
    try:
        return json.loads(text)
    except ValueError:
        return text


def instructions(tools: list[dict[str, Any]]) -> str:
    """The system text presenting tools to a model whose template has no tool syntax."""
    listed = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return (
        "You can call functions. Their signatures, as JSON schemas:\n"
        f"<tools>\n{listed}\n</tools>\n"
        "To call one, answer with a JSON object of its name and arguments inside tags:\n"
        f'{CALL_OPEN}{{"name": "<function name>", "arguments": {{...}}}}{CALL_CLOSE}'
    )


def render_with_tools(
    messages: tuple[ChatMessage, ...], tools: list[dict[str, Any]], render: Render
) -> str:
    """The prompt for messages and tools, natively when the template can."""
    native = message_dicts(messages, native=True)
    with_tools = render(native, tools)
    if with_tools != render(native, None):
        return with_tools
    fallback = message_dicts(messages, native=False)
    text = instructions(tools)
    if fallback and fallback[0]["role"] in ("system", "developer"):
        first = fallback[0]
        fallback[0] = {**first, "content": f"{first['content']}\n\n{text}"}
    else:
        fallback.insert(0, {"role": "system", "content": text})
    return render(fallback, None)
