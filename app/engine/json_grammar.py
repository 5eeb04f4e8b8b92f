"""JSON schema -> GBNF for llama.cpp's grammar sampler.

Built on llama-cpp-python's converter (llama_cpp.llama_grammar.SchemaConverter) with what a
strict client needs on top: every schema keyword is either turned into grammar or refused
(UnsupportedSchema) instead of being ignored; integer and number bounds are enforced by the
grammar (the converter ignores them); strings cannot hold raw control characters (JSON does
not allow them, and the converter's rule does).
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import RESERVED_NAMES, BuiltinRule, SchemaConverter

# Keywords that only describe (no constraint) or that the converter turns into grammar.
_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
}
_CONSTRAINTS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "$ref",
    "$defs",
    "definitions",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
}
_TYPES = {"string", "number", "integer", "boolean", "null", "object", "array"}
_FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
# JSON strings hold no raw control characters (json.loads refuses them).
_JSON_CHAR = BuiltinRule(
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ' + " ".join(["[0-9a-fA-F]"] * 4) + ")",
    [],
)
MAX_DIGITS = 16
_FRACTION = '("." [0-9]{1,15})?'
_ZERO_FRACTION = '("." "0"{1,15})?'


class UnsupportedSchema(ValueError):
    """The schema asks for something the grammar cannot enforce; the message says what."""


def _fixed_width(low: str, high: str) -> str:
    """GBNF for the digit strings of one width from low to high (leading zeros allowed)."""
    if not low:
        return ""
    if low[0] == high[0]:
        rest = _fixed_width(low[1:], high[1:])
        return f'"{low[0]}" {rest}'.strip()
    n = len(low) - 1
    if low[1:] == "0" * n and high[1:] == "9" * n:
        return f"[{low[0]}-{high[0]}]" + " [0-9]" * n
    parts = [f'"{low[0]}" {_fixed_width(low[1:], "9" * n)}'.strip()]
    if int(high[0]) - int(low[0]) > 1:
        parts.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}]" + " [0-9]" * n)
    parts.append(f'"{high[0]}" {_fixed_width("0" * n, high[1:])}'.strip())
    return "(" + " | ".join(parts) + ")"


def natural_range(low: int, high: int | None) -> str:
    """GBNF for the decimal numbers low..high (no leading zeros; high None: unbounded)."""
    assert low >= 0 and (high is None or high >= low)
    parts = []
    width = len(str(low))
    top = high if high is not None else 10**width - 1
    while width <= len(str(top)):
        first = max(low, 10 ** (width - 1) if width > 1 else 0)
        last = min(top, 10**width - 1)
        if first <= last:
            parts.append(_fixed_width(str(first), str(last)))
        width += 1
    if high is None:
        # Up to 16 digits in all, as the converter's own integers: a model must not be able
        # to write digits forever.
        parts.append(f"[1-9] [0-9]{{{width - 1},{max(width - 1, MAX_DIGITS - 1)}}}")
    return "(" + " | ".join(parts) + ")"


def integer_range(low: int | None, high: int | None) -> str:
    """GBNF for the integers low..high as JSON writes them; None: unbounded that side."""
    parts = []
    if low is None or low < 0:
        # Magnitudes of the negative numbers in range.
        smallest = 1 if high is None or high >= 0 else -high
        parts.append(f'"-" {natural_range(smallest, None if low is None else -low)}')
    if high is None or high >= 0:
        parts.append(natural_range(max(low or 0, 0), high))
    return "(" + " | ".join(parts) + ")"


def number_range(low: int | None, high: int | None) -> str:
    """GBNF for decimal numbers (no exponent) from low to high, both whole or None."""
    parts = []
    if low is None or low < 0:
        # -m.f with low <= -m.f <= high: integer part from (high < 0: -high) to -low.
        least = 0 if high is None or high >= 0 else -high
        if low is None:
            parts.append(f'"-" {natural_range(least, None)} {_FRACTION}')
        else:
            if -low - 1 >= least:
                parts.append(f'"-" {natural_range(least, -low - 1)} {_FRACTION}')
            parts.append(f'"-" "{-low}" {_ZERO_FRACTION}')
    if high is None or high >= 0:
        first = max(low or 0, 0)
        if high is None:
            parts.append(f"{natural_range(first, None)} {_FRACTION}")
        else:
            if high - 1 >= first:
                parts.append(f"{natural_range(first, high - 1)} {_FRACTION}")
            parts.append(f'"{high}" {_ZERO_FRACTION}')
    return "(" + " | ".join(parts) + ")"


def _whole(value: Any, where: str, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnsupportedSchema(f"{where}: {key} must be a number")
    if value != int(value):
        raise UnsupportedSchema(
            f"{where}: {key} {value} is not a whole number; the grammar bounds numbers by "
            "whole numbers only"
        )
    return int(value)


class StrictConverter(SchemaConverter):
    """The converter with bounds for integers and numbers and JSON-safe string characters."""

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        if name == "char":
            rule = _JSON_CHAR
        result: str = super()._add_primitive(name, rule)
        return result

    def visit(self, schema: dict[str, Any], name: str) -> str:
        kind = schema.get("type")
        bounded = any(
            k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        )
        if kind in ("integer", "number") and bounded:
            rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
            where = f"schema at {name or 'root'}"
            low = _whole(schema.get("minimum"), where, "minimum")
            high = _whole(schema.get("maximum"), where, "maximum")
            exclusive_low = _whole(schema.get("exclusiveMinimum"), where, "exclusiveMinimum")
            exclusive_high = _whole(schema.get("exclusiveMaximum"), where, "exclusiveMaximum")
            if kind == "number" and (exclusive_low is not None or exclusive_high is not None):
                raise UnsupportedSchema(
                    f"{where}: exclusiveMinimum/exclusiveMaximum are supported for integers only"
                )
            if exclusive_low is not None:
                low = exclusive_low + 1 if low is None else max(low, exclusive_low + 1)
            if exclusive_high is not None:
                high = exclusive_high - 1 if high is None else min(high, exclusive_high - 1)
            if low is not None and high is not None and low > high:
                raise UnsupportedSchema(f"{where}: no number lies between the bounds")
            body = integer_range(low, high) if kind == "integer" else number_range(low, high)
            added: str = self._add_rule(rule_name, f"{body} space")  # type: ignore[no-untyped-call]
            return added
        result: str = super().visit(schema, name)  # type: ignore[no-untyped-call]
        return result


def _check(schema: Any, where: str) -> None:
    """Refuse what the converter would ignore or get wrong; recurse into subschemas."""
    if isinstance(schema, bool):
        if schema:
            return
        raise UnsupportedSchema(f"{where}: the schema false matches nothing")
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"{where}: a schema is a JSON object")
    for key in schema:
        if key not in _CONSTRAINTS and key not in _ANNOTATIONS:
            raise UnsupportedSchema(f"{where}: the keyword {key!r} is not supported")
    kinds = schema.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds] if kinds is not None else []:
        if kind not in _TYPES:
            raise UnsupportedSchema(f"{where}: unknown type {kind!r}")
    if isinstance(kinds, list) and set(schema) & (_CONSTRAINTS - {"type"}):
        raise UnsupportedSchema(
            f"{where}: a list of types with further constraints is not supported; use anyOf"
        )
    fmt = schema.get("format")
    if fmt is not None and fmt not in _FORMATS:
        raise UnsupportedSchema(
            f"{where}: the string format {fmt!r} is not supported "
            f"(supported: {', '.join(sorted(_FORMATS))})"
        )
    if "pattern" in schema and not (
        isinstance(schema["pattern"], str)
        and schema["pattern"].startswith("^")
        and schema["pattern"].endswith("$")
    ):
        raise UnsupportedSchema(f"{where}: a pattern must be anchored with ^ and $")
    for key in ("properties", "$defs", "definitions"):
        children = schema.get(key, {})
        if not isinstance(children, dict):
            raise UnsupportedSchema(f"{where}: {key} must be an object")
        for child_name, child in children.items():
            _check(child, f"{where}.{key}.{child_name}")
    for key in ("anyOf", "oneOf", "prefixItems"):
        for i, child in enumerate(schema.get(key, [])):
            _check(child, f"{where}.{key}[{i}]")
    items = schema.get("items")
    if isinstance(items, list):
        for i, child in enumerate(items):
            _check(child, f"{where}.items[{i}]")
    elif items is not None:
        _check(items, f"{where}.items")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        _check(extra, f"{where}.additionalProperties")


def schema_to_gbnf(schema_json: str) -> str:
    """GBNF for the JSON values matching the schema; UnsupportedSchema when it cannot be."""
    try:
        schema = json.loads(schema_json)
    except ValueError as exc:
        raise UnsupportedSchema(f"the schema is not JSON: {exc}") from None
    _check(schema, "schema")
    if schema is True:
        schema = {}
    converter = StrictConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    try:
        resolved = converter.resolve_refs(schema, "input")
        converter.visit(resolved, "")
        grammar: str = converter.format_grammar()  # type: ignore[no-untyped-call]
    except UnsupportedSchema:
        raise
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UnsupportedSchema(f"the schema cannot be turned into a grammar: {exc}") from None
    return grammar


def tool_call_gbnf(source: str) -> str:
    """GBNF for one (or, parallel, one or more) <tool_call> blocks, each a JSON object naming
    one of the tools with arguments matching its parameters schema.

    source: {"tools": [{"name": ..., "parameters": {...}}, ...], "parallel": bool}.
    """
    spec = json.loads(source)
    calls = []
    for i, function in enumerate(spec["tools"]):
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        _check(parameters, f"tools[{i}].function.parameters")
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    converter = StrictConverter(  # type: ignore[no-untyped-call]
        prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    try:
        converter.visit(converter.resolve_refs(schema, "input"), "call")
        rules: str = converter.format_grammar()  # type: ignore[no-untyped-call]
    except UnsupportedSchema:
        raise
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UnsupportedSchema(
            f"a tool's parameters cannot be turned into a grammar: {exc}"
        ) from None
    block = '"<tool_call>" space call "</tool_call>"'
    repeat = f' ("\\n" {block})*' if spec.get("parallel") else ""
    return f"root ::= {block}{repeat}\n{rules}"
