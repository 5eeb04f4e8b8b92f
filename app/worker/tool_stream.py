"""Forced tool calls streamed as OpenAI streams them: delta.tool_calls while they generate.

With tool_choice required or a named function, the grammar (json_grammar.tool_call_gbnf)
makes the answer exactly one or more `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
blocks, name first. So a call can be announced as soon as its name is complete (index, id,
type, name, arguments "") and its arguments' JSON text passed on as it is generated, in
fragments a client concatenates. Answers the grammar did not force (tool_choice auto) may be
prose or a malformed call, so they are still parsed whole at the end (tool_calls.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.worker.tool_calls import new_call_id

# A call's head up to the first character of its arguments (JSON whitespace allowed).
_HEAD = re.compile(
    r'\s*<tool_call>\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*'
)
_TAIL = re.compile(r"\s*\}\s*</tool_call>")


class ToolCallStream:
    """Turns one choice's text deltas into OpenAI delta.tool_calls entries."""

    def __init__(self) -> None:
        self._pending = ""
        self.calls = 0
        # Next expected: a call's head (True) or the end of the call just streamed.
        self._at_head = True
        # Inside a call's arguments: JSON nesting depth and string state.
        self._in_arguments = False
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._started = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The delta.tool_calls entries text completes (often none)."""
        self._pending += text
        out: list[dict[str, Any]] = []
        while self._pending:
            if self._in_arguments:
                fragment, ended = self._arguments()
                if fragment:
                    out.append({"index": self.calls - 1, "function": {"arguments": fragment}})
                if not ended:
                    break
                continue
            match = (_HEAD if self._at_head else _TAIL).match(self._pending)
            if match is None:
                break
            self._pending = self._pending[match.end() :]
            if self._at_head:
                name = json.loads(f'"{match.group(1)}"')
                out.append(
                    {
                        "index": self.calls,
                        "id": new_call_id(),
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                )
                self.calls += 1
                self._in_arguments = True
                self._started = False
            else:
                self._at_head = True
        return out

    def _arguments(self) -> tuple[str, bool]:
        """The arguments' text in the pending input, and whether they end there."""
        text = self._pending
        if not self._started:  # whitespace before the arguments is not part of them
            text = text.lstrip()
            self._started = bool(text)
        for i, char in enumerate(text):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                if self._depth == 0:  # the call object's own closing brace
                    self._pending = text[i:]
                    self._in_arguments = False
                    self._at_head = False
                    return text[:i].rstrip(), True
                self._depth -= 1
        # Hold back trailing whitespace: it may turn out to sit before the closing brace.
        kept = text.rstrip()
        self._pending = text[len(kept) :]
        return kept, False
