"""Output constraints as llama.cpp grammar samplers: GBNF text cached per constraint, checked
once by llama.cpp's own parser before a request is queued (a 400, never a failed decode)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import llama_cpp

from app.engine.errors import BadRequest
from app.engine.json_grammar import UnsupportedSchema, schema_to_gbnf, tool_call_gbnf
from app.engine.requests import OutputConstraint

# Distinct schemas kept converted and checked; clients tend to reuse a handful.
CACHE_ENTRIES = 256
ROOT = b"root"


def grammar_sampler(vocab: Any, gbnf: str) -> Any:
    """A new llama.cpp grammar sampler for gbnf, or None when llama.cpp cannot parse it."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), ROOT)
    # ctypes hands back a NULL pointer as a false-y pointer object, not None.
    return sampler if sampler else None


class GrammarCache:
    """Constraint -> GBNF that llama.cpp parses; one per engine, safe from any thread."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._entries: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def gbnf(self, constraint: OutputConstraint) -> str:
        """The checked grammar for constraint; BadRequest naming its param otherwise."""
        key = (constraint.kind, constraint.source)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                return cached
        gbnf = self._convert(constraint)
        sampler = grammar_sampler(self._vocab, gbnf)
        if sampler is None:
            what = "grammar" if constraint.kind == "grammar" else "grammar made from the schema"
            raise BadRequest(
                f"{constraint.param}: llama.cpp could not parse the {what} (GBNF syntax, "
                "undefined rules or left recursion; the root rule is 'root')",
                param=constraint.param,
            )
        llama_cpp.llama_sampler_free(sampler)
        with self._lock:
            self._entries[key] = gbnf
            while len(self._entries) > CACHE_ENTRIES:
                self._entries.popitem(last=False)
        return gbnf

    @staticmethod
    def _convert(constraint: OutputConstraint) -> str:
        if constraint.kind == "grammar":
            if not constraint.source.strip():
                raise BadRequest(f"{constraint.param}: the grammar is empty", constraint.param)
            return constraint.source
        try:
            if constraint.kind == "tool_call":
                return tool_call_gbnf(constraint.source)
            source = constraint.source if constraint.kind == "json_schema" else '{"type": "object"}'
            return schema_to_gbnf(source)
        except UnsupportedSchema as exc:
            raise BadRequest(f"{constraint.param}: {exc}", param=constraint.param) from None
