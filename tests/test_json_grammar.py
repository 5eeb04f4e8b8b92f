"""JSON schema -> GBNF (app/engine/json_grammar.py): bounds the converter ignores are exact,
unsupported keywords are refused, and the single-slot engine honours a schema too."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import jsonschema
import pytest

from app.engine.errors import BadRequest
from app.engine.events import Finished, TextDelta
from app.engine.json_grammar import (
    UnsupportedSchema,
    integer_range,
    number_range,
    schema_to_gbnf,
    tool_call_gbnf,
)
from app.engine.loader import LoadOptions
from app.engine.requests import ChatMessage, GenerationRequest, OutputConstraint, SamplingParams
from app.engine.single_slot import load_engine
from app.store.demo import find_demo_model
from tests.openai_schemas import SCHEMAS


def as_regex(rule: str) -> re.Pattern[str]:
    """A range rule (literals, classes, groups, repetitions only) as a Python regex."""
    pattern = re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), rule)
    return re.compile("^" + pattern.replace(" ", "") + "$")


def test_integer_and_number_ranges_match_exactly_the_numbers_in_bounds() -> None:
    rng = random.Random(13)
    for _ in range(150):
        low = rng.choice([None, rng.randint(-1200, 1200)])
        high = rng.choice([None, rng.randint(-1200, 1200)])
        if low is not None and high is not None and low > high:
            low, high = high, low
        integers = as_regex(integer_range(low, high))
        for x in range(-1300, 1300):
            inside = (low is None or x >= low) and (high is None or x <= high)
            assert bool(integers.match(str(x))) == inside, (low, high, x)
        assert not integers.match("007")
        numbers = as_regex(number_range(low, high))
        for _ in range(200):
            value = round(rng.uniform(-1300, 1300), rng.choice([0, 1, 3]))
            text = repr(value) if value != int(value) else str(int(value))
            inside = (low is None or value >= low) and (high is None or value <= high)
            assert bool(numbers.match(text)) == inside, (low, high, text)


def test_every_test_schema_converts() -> None:
    for schema in SCHEMAS:
        assert "root ::= " in schema_to_gbnf(json.dumps(schema))


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ({"type": "string", "format": "email"}, "format"),
        ({"type": "object", "not": {"type": "null"}}, "'not'"),
        ({"allOf": [{"type": "object"}]}, "'allOf'"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "number", "minimum": 0.5}, "whole number"),
        ({"type": "number", "exclusiveMaximum": 3}, "integers only"),
        ({"type": ["integer", "null"], "minimum": 3}, "anyOf"),
        ({"type": "string", "pattern": "abc"}, "anchored"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "between"),
        ({"type": "complex"}, "unknown type"),
        ({"$ref": "https://example.com/schema.json"}, "cannot be turned"),
    ],
)
def test_unsupported_schemas_are_refused_with_the_reason(
    schema: dict[str, object], needle: str
) -> None:
    with pytest.raises(UnsupportedSchema, match=re.escape(needle)):
        schema_to_gbnf(json.dumps(schema))


def test_tool_call_grammar_names_each_tool() -> None:
    source = json.dumps(
        {"tools": [{"name": "a", "parameters": None}, {"name": "b"}], "parallel": True}
    )
    grammar = tool_call_gbnf(source)
    assert grammar.startswith('root ::= "<tool_call>"') and '"\\"a\\""' in grammar
    with pytest.raises(UnsupportedSchema):
        tool_call_gbnf(json.dumps({"tools": [{"name": "a", "parameters": {"not": {}}}]}))


def test_single_slot_engine_honours_a_schema_and_refuses_logprobs() -> None:
    path: Path = find_demo_model().path
    engine = load_engine(LoadOptions(path, n_ctx=512), max_queue=1)
    schema = SCHEMAS[9]

    async def run() -> str:
        request = GenerationRequest(
            messages=(ChatMessage("user", "Two people as JSON."),),
            sampling=SamplingParams(max_tokens=200, seed=1),
            constraint=OutputConstraint("json_schema", json.dumps(schema), "response_format"),
        )
        job = await engine.submit(request)
        texts = []
        async for event in job.events():
            if isinstance(event, TextDelta):
                texts.append(event.text)
            else:
                assert isinstance(event, Finished) and event.finish_reason == "stop"
        with pytest.raises(BadRequest) as refused:
            await engine.submit(GenerationRequest(prompt="x", sampling=SamplingParams(logprobs=2)))
        assert refused.value.param == "logprobs"
        return "".join(texts)

    try:
        text = asyncio.run(run())
    finally:
        engine.close()
    jsonschema.validate(json.loads(text), schema)
