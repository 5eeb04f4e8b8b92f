"""The OpenAI surface with the official openai client against a real worker (llama.cpp on the
SmolLM2 demo model) and a real gateway in front of it: structured output through grammars,
sampling fields honoured, every refused field and every bad text a 400 naming its param."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from app.db.database import Database
from app.engine.cpu_buffers import new_llama
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model, find_demo_model
from tests.conftest import PgServer, with_database
from tests.gateway_harness import GatewayThread, add_deployment, gateway_settings
from tests.openai_schemas import SCHEMAS
from tests.worker_process import WorkerLauncher

ALIAS = "smol"
SLOTS = 4
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


@dataclass
class Served:
    worker: str
    gateway: str

    def base(self, via: str) -> str:
        return self.worker if via == "worker" else self.gateway


@pytest.fixture(scope="module")
def served(
    pg_server: PgServer, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One worker (SLOTS slots) and a gateway in front of it, shared by this module's tests."""
    name = pg_server.create_database(template=migrated_template)
    url = with_database(pg_server.url, name)
    home = tmp_path_factory.mktemp("surface")
    database = Database(url)
    launcher = WorkerLauncher(db_url=url, home=home / "herd-home", models_dir=home / "models")
    gateway = None
    try:
        model = add_demo_model(ModelStore(database.engine, home / "models"))
        deployment = add_deployment(database.engine, ALIAS, model.id)
        worker = launcher.start(
            "--model", model.name, "--alias", ALIAS, "--deployment-id", str(deployment),
            "--parallel", str(SLOTS), "--n-ctx", "1024",
        )  # fmt: skip
        worker_url = worker.wait_ready(timeout_s=180)
        gateway = GatewayThread(gateway_settings(home, url), url)
        gateway.wait_workers(1)
        yield Served(worker_url, gateway.url)
    finally:
        if gateway is not None:
            gateway.stop()
        launcher.kill_all()
        database.close()
        pg_server.drop_database(name)


def client(served: Served, via: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.base(via)}/v1", api_key="none", max_retries=0)


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_json_schema_output_parses_and_validates(served: Served, index: int) -> None:
    schema = SCHEMAS[index]
    # Alternate worker/gateway and streamed/whole, sampled (seeded) so outputs vary.
    via = "gateway" if index % 2 else "worker"
    kwargs: dict[str, Any] = {
        "model": ALIAS,
        "messages": MESSAGES,
        "response_format": json_schema_format(schema),
        "max_tokens": 300,
        "seed": index,
        "temperature": 1.0,
    }
    if index % 3 == 0:
        chunks = list(client(served, via).chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        answer = client(served, via).chat.completions.create(**kwargs)
        text = answer.choices[0].message.content or ""
        finish = answer.choices[0].finish_reason
    assert finish == "stop", (finish, text)
    value = json.loads(text)
    jsonschema.validate(value, schema)


def test_json_object_mode_and_text_completions_give_json(served: Served) -> None:
    for via in ("worker", "gateway"):
        answer = client(served, via).chat.completions.create(
            model=ALIAS,
            messages=MESSAGES,
            response_format={"type": "json_object"},
            max_tokens=200,
            seed=3,
        )
        text = answer.choices[0].message.content or ""
        if answer.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
        else:  # cut by max_tokens: what came is still the start of an object
            assert text.lstrip().startswith("{")
    completion = client(served, "gateway").completions.create(
        model=ALIAS,
        prompt="The answer:",
        max_tokens=100,
        extra_body={"response_format": json_schema_format(SCHEMAS[5])},
    )
    assert json.loads(completion.choices[0].text)["colour"] in ("red", "green", "blue")


def test_gbnf_grammar_extension(served: Served) -> None:
    grammar = 'root ::= ("yes" | "no") "." '
    for via in ("worker", "gateway"):
        answer = client(served, via).chat.completions.create(
            model=ALIAS,
            messages=[{"role": "user", "content": "Is the sky green?"}],
            max_tokens=10,
            extra_body={"grammar": grammar},
        )
        assert answer.choices[0].message.content in ("yes.", "no.")
        assert answer.choices[0].finish_reason == "stop"


def refused(served: Served, via: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST body and return the error of the 400 it must get."""
    raw = json.dumps({"model": ALIAS, **body}).encode()
    response = httpx.post(
        f"{served.base(via)}{path}",
        content=raw,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    return error


CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
REFUSED_FIELDS = [
    (CHAT, {"messages": MESSAGES, "n": 200}, "n"),
    (CHAT, {"messages": MESSAGES, "n": SLOTS + 1}, "n"),
    (CHAT, {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    (CHAT, {"messages": MESSAGES, "top_logprobs": 3}, "top_logprobs"),
    (CHAT, {"messages": MESSAGES, "tool_choice": "required"}, "tool_choice"),
    (
        CHAT,
        {
            "messages": MESSAGES,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "tool_choice.function.name",
    ),
    (CHAT, {"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools.[0].function"),
    (CHAT, {"messages": MESSAGES, "audio": {"voice": "x"}}, "audio"),
    (CHAT, {"messages": MESSAGES, "modalities": ["text", "audio"]}, "modalities"),
    (CHAT, {"messages": MESSAGES, "surprise": 1}, "surprise"),
    (CHAT, {"messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    (CHAT, {"messages": MESSAGES, "top_p": 1.5}, "top_p"),
    (CHAT, {"messages": MESSAGES, "logit_bias": {"abc": 1}}, "logit_bias"),
    (CHAT, {"messages": MESSAGES, "presence_penalty": 3}, "presence_penalty"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, None),
    (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, "messages.[0].role"),
    (CHAT, {"messages": MESSAGES, "response_format": {"type": "xml"}}, None),
    (TEXT, {"prompt": "x", "echo": True}, "echo"),
    (TEXT, {"prompt": "x", "best_of": 3}, "best_of"),
    (TEXT, {"prompt": "x", "suffix": "y"}, "suffix"),
    (TEXT, {"prompt": "x", "logprobs": 6}, "logprobs"),
    (TEXT, {"prompt": ["a", "b"]}, "prompt"),
]


@pytest.mark.parametrize("via", ["worker", "gateway"])
@pytest.mark.parametrize(("path", "body", "param"), REFUSED_FIELDS)
def test_refused_fields_name_their_param(
    served: Served, via: str, path: str, body: dict[str, Any], param: str | None
) -> None:
    error = refused(served, via, path, body)
    if param is None:  # a nested field: the param points into it
        assert error["param"] and error["param"].split(".")[0] in body, error
    else:
        assert error["param"] == param, error


ENGINE_REFUSALS = [
    # Checked by the worker's engine before any decode; the gateway passes the 400 through.
    ({"response_format": json_schema_format({"type": "string", "format": "email"})}, "format"),
    ({"response_format": json_schema_format({"type": "object", "not": {}})}, "'not'"),
    (
        {"response_format": json_schema_format({"type": "number", "minimum": 0.5})},
        "whole number",
    ),
    ({"grammar": "root ::= undefined-rule"}, "could not parse"),
    ({"grammar": "root ::= [a-z"}, "could not parse"),
    ({"grammar": 'root ::= root "a"'}, "could not parse"),
    ({"logit_bias": {"99999999": 5}}, "token"),
    ({"grammar": "root ::= [a-z]+", "response_format": {"type": "json_object"}}, "either"),
]


@pytest.mark.parametrize("via", ["worker", "gateway"])
@pytest.mark.parametrize(("extra", "needle"), ENGINE_REFUSALS)
def test_unusable_schemas_and_grammars_are_400_before_decoding(
    served: Served, via: str, extra: dict[str, Any], needle: str
) -> None:
    error = refused(served, via, CHAT, {"messages": MESSAGES, "max_tokens": 5, **extra})
    assert needle in error["message"], error
    key = next(iter(extra))
    assert error["param"] and error["param"].split(".")[0] == key, error
    # The worker's 400 reached the client as it was: no upstream error counted at the gateway.
    metrics = httpx.get(f"{served.gateway}/metrics", timeout=10).text
    errors = [
        line
        for line in metrics.splitlines()
        if line.startswith("herd_gateway_upstream_errors_total{") and not line.endswith(" 0")
    ]
    assert errors == []


BAD_TEXT = [
    ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages.[0].content"),
    ({"messages": [{"role": "user", "content": "nul\u0000"}]}, "messages.[0].content"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
        "messages.[0].content",
    ),
    ({"messages": MESSAGES, "stop": "\ud800"}, "stop"),
    ({"messages": MESSAGES, "grammar": 'root ::= "\ud800"'}, "grammar"),
    (
        {"messages": MESSAGES, "response_format": json_schema_format({"enum": ["\ud800"]})},
        "response_format",
    ),
]


@pytest.mark.parametrize("via", ["worker", "gateway"])
@pytest.mark.parametrize(("body", "param"), BAD_TEXT)
def test_bad_text_is_a_400_and_the_worker_stays_healthy(
    served: Served, via: str, body: dict[str, Any], param: str
) -> None:
    error = refused(served, via, CHAT, body)
    assert error["param"].startswith(param), error
    assert "surrogate" in error["message"] or "NUL" in error["message"]
    # No worker failure was counted: the next call is served by the same worker at once.
    answer = client(served, via).chat.completions.create(
        model=ALIAS, messages=MESSAGES, max_tokens=3
    )
    assert answer.choices[0].message.content is not None


def test_logit_bias_and_penalties_are_honoured(served: Served) -> None:
    api = client(served, "worker")
    vocab = new_llama(model_path=str(find_demo_model().path), vocab_only=True, verbose=False)
    try:
        zebra = vocab.tokenize(b" zebra", add_bos=False)[0]
        piece = vocab.detokenize([zebra]).decode()
        greedy: dict[str, Any] = {"model": ALIAS, "prompt": "Name a colour:", "temperature": 0}
        forced = api.completions.create(**greedy, max_tokens=3, logit_bias={str(zebra): 100})
        assert forced.choices[0].text == piece * 3
        plain = api.completions.create(**greedy, max_tokens=1).choices[0].text
        first = vocab.tokenize(plain.encode(), add_bos=False)[0]
        banned = api.completions.create(**greedy, max_tokens=1, logit_bias={str(first): -100})
        assert banned.choices[0].text != plain
    finally:
        vocab.close()
    # Greedy decoding of a repetitive prompt repeats; the penalties must break that.
    repeat: dict[str, Any] = {
        "model": ALIAS,
        "prompt": "hello hello hello hello hello hello",
        "max_tokens": 12,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    plain_text = api.completions.create(**repeat).choices[0].text
    assert plain_text.count("hello") >= 3, plain_text
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        penalised = api.completions.create(**repeat, **penalty).choices[0].text
        assert penalised.count("hello") < plain_text.count("hello"), (penalty, penalised)


@pytest.mark.parametrize("via", ["worker", "gateway"])
def test_logprobs_are_sane_streamed_and_not(served: Served, via: str) -> None:
    api = client(served, via)
    greedy: dict[str, Any] = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "Name three fruits."}],
        "max_tokens": 12,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 5,
    }
    answer = api.chat.completions.create(**greedy)
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert answer.usage is not None and len(content) == answer.usage.completion_tokens
    assert "".join(t.token for t in content) == choice.message.content
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert all(lp <= 0 for lp in tops) and sum(math.exp(lp) for lp in tops) <= 1 + 1e-4
        # Greedy: the chosen token is the likeliest one.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-5)
        assert bytes(entry.bytes or []) == entry.token.encode()

    streamed = [
        t
        for chunk in api.chat.completions.create(**greedy, stream=True)
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content
        for t in chunk.choices[0].logprobs.content
    ]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-4)

    sampled = api.chat.completions.create(**{**greedy, "temperature": 1.0, "seed": 7})
    assert sampled.choices[0].logprobs is not None
    for entry in sampled.choices[0].logprobs.content or []:
        # A sampled token outside the top 5 is less likely than all of them.
        tops = {t.token: t.logprob for t in entry.top_logprobs}
        assert entry.token in tops or entry.logprob <= min(tops.values()) + 1e-5

    text = api.completions.create(
        model=ALIAS, prompt="1, 2, 3,", max_tokens=6, temperature=0, logprobs=3
    )
    legacy = text.choices[0].logprobs
    assert legacy is not None and legacy.tokens and legacy.token_logprobs and legacy.top_logprobs
    assert "".join(legacy.tokens) == text.choices[0].text
    assert len(legacy.token_logprobs) == len(legacy.tokens) == len(legacy.top_logprobs)
    assert all(len(top) == 3 for top in legacy.top_logprobs)
    assert legacy.text_offset == [
        sum(len(t) for t in legacy.tokens[:i]) for i in range(len(legacy.tokens))
    ]


@pytest.mark.parametrize("via", ["worker", "gateway"])
def test_n_choices_come_with_indexes_and_exact_usage(served: Served, via: str) -> None:
    api = client(served, via)
    ask: dict[str, Any] = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "Tell me a short story about a cat."}],
        "max_tokens": 10,
        "temperature": 1.0,
        "seed": 11,
        "logprobs": True,
    }
    one = api.chat.completions.create(**ask)
    three = api.chat.completions.create(**ask, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert one.usage is not None and three.usage is not None
    # The prompt counts once; completion tokens are every choice's.
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    counted = sum(len(c.logprobs.content or []) for c in three.choices if c.logprobs)
    assert three.usage.completion_tokens == counted
    # Choice 0 samples exactly as a one-choice request with the same seed.
    assert three.choices[0].message.content == one.choices[0].message.content
    assert len({c.message.content for c in three.choices}) > 1

    chunks = list(api.chat.completions.create(**ask, n=3, stream=True))
    texts = {i: "" for i in range(3)}
    ends = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                ends[choice.index] = choice.finish_reason
    assert set(ends) == {0, 1, 2}
    assert texts == {i: c.message.content for i, c in enumerate(three.choices)}

    text = api.completions.create(model=ALIAS, prompt="Once upon a time", max_tokens=6, n=2)
    assert [c.index for c in text.choices] == [0, 1]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1, "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
            },
            "required": ["a", "b"],
        },
    },
}
SCHEMA_OF = {"get_weather": WEATHER, "add": ADD}


def check_calls(calls: list[Any], names: set[str]) -> None:
    assert calls, "no tool calls"
    for call in calls:
        assert call.type == "function" and call.id
        assert call.function.name in names
        schema = SCHEMA_OF[call.function.name]["function"]["parameters"]  # type: ignore[index]
        jsonschema.validate(json.loads(call.function.arguments), schema)


@pytest.mark.parametrize("via", ["worker", "gateway"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_forced_tool_calls_always_parse(served: Served, via: str, seed: int) -> None:
    api = client(served, via)
    ask: dict[str, Any] = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "What is the weather in Paris? And 2+3?"}],
        "tools": [WEATHER, ADD],
        "max_tokens": 120,
        "seed": seed,
        "temperature": 1.0,
    }
    required = api.chat.completions.create(**ask, tool_choice="required")
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    check_calls(choice.message.tool_calls or [], {"get_weather", "add"})

    named = api.chat.completions.create(
        **ask,
        tool_choice={"type": "function", "function": {"name": "add"}},
        parallel_tool_calls=False,
    )
    calls = named.choices[0].message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "add"
    check_calls(calls, {"add"})

    # Streamed as OpenAI does: each call's first delta.tool_calls entry has its id, type and
    # name (arguments ""), the later ones argument fragments only.
    streamed: dict[int, dict[str, str]] = {}
    fragments: dict[int, int] = {}
    finish = None
    for chunk in api.chat.completions.create(**ask, tool_choice="required", stream=True):
        for c in chunk.choices:
            for delta in c.delta.tool_calls or []:
                assert delta.function is not None
                if delta.index not in streamed:
                    assert delta.id and delta.type == "function" and delta.function.name
                    assert delta.function.arguments == ""
                else:
                    assert delta.id is None and delta.function.name is None
                    fragments[delta.index] = fragments.get(delta.index, 0) + 1
                entry = streamed.setdefault(delta.index, {"name": "", "arguments": ""})
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls" and streamed
    assert max(fragments.values()) > 1, "arguments came whole, not as they were generated"
    for entry in streamed.values():
        schema = SCHEMA_OF[entry["name"]]["function"]["parameters"]  # type: ignore[index]
        jsonschema.validate(json.loads(entry["arguments"]), schema)


def test_tool_history_and_auto_choice_are_accepted(served: Served) -> None:
    api = client(served, "gateway")
    history: list[Any] = [
        {"role": "user", "content": "What is 2+3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]
    answer = api.chat.completions.create(
        model=ALIAS, messages=history, tools=[ADD], max_tokens=20, temperature=0
    )
    choice = answer.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    if choice.finish_reason == "tool_calls":
        check_calls(choice.message.tool_calls or [], {"add"})
    else:
        assert choice.message.content is not None
    # tool_choice none: tools stay out of the prompt, the answer is text.
    plain = api.chat.completions.create(
        model=ALIAS, messages=history, tools=[ADD], tool_choice="none", max_tokens=5
    )
    assert plain.choices[0].message.tool_calls is None
