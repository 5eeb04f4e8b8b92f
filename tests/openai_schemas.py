"""JSON schemas the structured-output tests constrain the demo model with: nested objects,
arrays, enums, required fields, bounded numbers. Strings and arrays are bounded so a tiny
model that would ramble ends anyway: the grammar, not the model, makes the output valid."""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "minLength": 1, "maxLength": 12}
SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"name": NAME}, "required": ["name"]},
    {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["age"],
    },
    {
        "type": "object",
        "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["score"],
    },
    {
        "type": "object",
        "properties": {"temp": {"type": "integer", "minimum": -40, "maximum": -5}},
        "required": ["temp"],
    },
    {
        "type": "object",
        "properties": {"delta": {"type": "number", "minimum": -3, "maximum": 7}},
        "required": ["delta"],
    },
    {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}},
        "required": ["colour"],
    },
    {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "note": {"type": "null"}},
        "required": ["ok", "note"],
    },
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 3}},
        "required": ["tags"],
    },
    {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": -100, "maximum": 100},
                    "y": {"type": "integer", "minimum": -100, "maximum": 100},
                },
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "required": ["point"],
    },
    {
        "type": "object",
        "properties": {
            "people": {
                "type": "array",
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": NAME,
                        "age": {"type": "integer", "minimum": 1, "maximum": 99},
                    },
                    "required": ["name", "age"],
                },
            }
        },
        "required": ["people"],
    },
    {
        "type": "object",
        "properties": {
            "status": {"const": "done"},
            "count": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
        },
        "required": ["status", "count"],
    },
    {
        "type": "object",
        "properties": {"id": {"type": "string", "format": "uuid"}},
        "required": ["id"],
    },
    {
        "type": "object",
        "properties": {"day": {"type": "string", "format": "date"}},
        "required": ["day"],
    },
    {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
        "required": ["code"],
    },
    {
        "type": "object",
        "properties": {"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, NAME]}},
        "required": ["value"],
    },
    {
        "type": "object",
        "properties": {"pair": {"type": "array", "prefixItems": [NAME, {"type": "boolean"}]}},
        "required": ["pair"],
    },
    {
        "type": "object",
        "properties": {"a": NAME, "b": {"type": "integer", "minimum": 5, "maximum": 5000}},
        "required": ["a"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"sku": NAME, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["sku", "qty"],
            }
        },
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 2}
        },
        "required": ["items"],
    },
    {
        "type": "object",
        "properties": {
            "matrix": {
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "items": {
                    "type": "array",
                    "minItems": 2,
                    "maxItems": 2,
                    "items": {"type": "integer", "minimum": 0, "maximum": 9},
                },
            }
        },
        "required": ["matrix"],
    },
    {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "name": NAME,
                    "role": {"enum": ["admin", "viewer"]},
                    "address": {
                        "type": "object",
                        "properties": {
                            "city": NAME,
                            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                        },
                        "required": ["city", "zip"],
                    },
                },
                "required": ["name", "role", "address"],
            }
        },
        "required": ["user"],
    },
    {
        "type": "object",
        "properties": {
            "price": {"type": "number", "minimum": 10, "maximum": 250},
            "currency": {"enum": ["EUR", "USD"]},
            "discount": {"type": ["number", "null"]},
        },
        "required": ["price", "currency", "discount"],
    },
    {
        "type": "object",
        "properties": {"big": {"type": "integer", "minimum": 1000}},
        "required": ["big"],
    },
]
