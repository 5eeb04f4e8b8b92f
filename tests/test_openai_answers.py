"""The OpenAI surface's answer builders, shared by worker and gateway: a replayed answer has
the live answer's shape, events are framed once, and every error has the one shape."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.openai_api.completions import (
    CHAT,
    ChatFormat,
    ChoiceText,
    cached_body,
    cached_chunks,
)
from app.openai_api.embeddings import parse_request
from app.openai_api.errors import ApiError, ErrorResponse, error_body, unavailable
from app.openai_api.sse import SSE_DONE, sse

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


@dataclass(frozen=True)
class Stored:
    text: str = "Hello"
    finish_reason: str = "stop"
    usage: dict[str, Any] = field(default_factory=lambda: dict(USAGE))
    model: str = "smol-v1"


def _events(chunks: list[bytes]) -> list[Any]:
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks)
    return [json.loads(c[len(b"data: ") : -2]) for c in chunks[:-1]]


def test_events_are_compact_json_and_end_with_done() -> None:
    assert sse({"a": 1, "b": "é"}) == b'data: {"a":1,"b":"\\u00e9"}\n\n'
    assert sse(b'{"a":1}') == b'data: {"a":1}\n\n'  # a relayed chunk, encoded already
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_a_cached_chat_answer_has_the_live_answers_choice() -> None:
    body = cached_body(CHAT, "chatcmpl-1", Stored())
    live = ChatFormat("smol-v1").choice(0, ChoiceText("Hello", "stop"))
    assert body["id"] == "chatcmpl-1" and body["object"] == "chat.completion"
    assert body["choices"] == [live] and body["usage"] == USAGE and "timings" not in body


def test_a_cached_text_answer_is_a_text_completion() -> None:
    body = cached_body("completions", "cmpl-1", Stored(finish_reason="length"))
    assert body["object"] == "text_completion" and body["model"] == "smol-v1"
    assert body["choices"] == [
        {"index": 0, "text": "Hello", "logprobs": None, "finish_reason": "length"}
    ]


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_cached_chat_stream_replays_role_text_end_and_usage(include_usage: bool) -> None:
    chunks = cached_chunks(CHAT, "chatcmpl-2", Stored(), include_usage)
    assert chunks[-1] == SSE_DONE
    events = _events(chunks)
    assert {e["id"] for e in events} == {"chatcmpl-2"}
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Hello"}, {}]
    assert events[2]["choices"][0]["finish_reason"] == "stop"
    if include_usage:
        assert events[-1]["choices"] == [] and events[-1]["usage"] == USAGE
    else:
        assert len(events) == 3 and all("usage" not in e for e in events)


def test_a_cached_text_stream_is_text_then_end() -> None:
    events = _events(cached_chunks("completions", "cmpl-2", Stored(), False))
    assert [(e["choices"][0]["text"], e["choices"][0]["finish_reason"]) for e in events] == [
        ("Hello", None),
        ("", "stop"),
    ]


def test_the_error_body_is_the_documented_shape() -> None:
    body = error_body("no such field", "invalid_request_error", "invalid_value", "messages")
    assert list(body["error"]) == ["message", "type", "param", "code"]
    assert ErrorResponse.model_validate(body).model_dump() == body


def test_every_503_has_one_type_and_its_retry_after() -> None:
    error = unavailable("the model is loading", "model_loading", 1)
    response = error.response()
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert json.loads(response.body)["error"] == {
        "message": "the model is loading",
        "type": "service_unavailable",
        "param": None,
        "code": "model_loading",
    }


def test_an_embeddings_refusal_is_an_api_error_naming_its_field() -> None:
    with pytest.raises(ApiError) as refused:
        parse_request({"model": "e", "input": []})
    assert refused.value.status == 400
    assert refused.value.body()["error"] == {
        "message": "input is empty: send a string or a list of them",
        "type": "invalid_request_error",
        "param": "input",
        "code": "invalid_value",
    }
