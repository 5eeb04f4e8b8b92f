"""Bad input at the gateway, case by case: each gets a clear 4xx in the OpenAI error shape,
and the gateway keeps serving. Real gateway, real stub worker process, real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.gateway_harness import ServedAlias, served_alias, wait_for

ALIAS = "m"
LIMIT_BYTES = 64 * 1024


@pytest.fixture
def target(db_url: str, tmp_path: Path) -> Iterator[ServedAlias]:
    with served_alias(db_url, tmp_path, ALIAS, gateway_max_body_bytes=LIMIT_BYTES) as served:
        yield served


def post(target: ServedAlias, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{target.url}{path}", timeout=30, **kwargs)


def chat_body(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": ALIAS, "messages": [{"role": "user", "content": content}], **extra}


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert {"message", "type", "code"} <= set(error)
    return error


def test_oversized_body_and_prompt_get_413_naming_the_limit(target: ServedAlias) -> None:
    big = chat_body("x" * (LIMIT_BYTES + 1))
    error = error_of(post(target, "/v1/chat/completions", json=big), 413)
    assert str(LIMIT_BYTES) in error["message"]
    assert "HERD_GATEWAY_MAX_BODY_BYTES" in error["message"]
    assert error["code"] == "body_too_large"

    # Chunked, without a Content-Length: counted as it arrives.
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "m", "prompt": "'
        for _ in range(LIMIT_BYTES // 1024 + 2):
            yield b"y" * 1024
        yield b'"}'

    error = error_of(post(target, "/v1/completions", content=chunks()), 413)
    assert str(LIMIT_BYTES) in error["message"]

    # Just under the limit is served.
    ok = post(target, "/v1/chat/completions", json=chat_body("z" * (LIMIT_BYTES - 200)))
    assert ok.status_code == 200, ok.text


def test_invalid_utf8_and_invalid_json_are_400s(target: ServedAlias) -> None:
    headers = {"Content-Type": "application/json"}
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    error = error_of(post(target, "/v1/chat/completions", content=raw, headers=headers), 400)
    assert "UTF-8" in error["message"]

    error = error_of(post(target, "/v1/chat/completions", content=b"{nope", headers=headers), 400)
    assert "JSON" in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (chat_body(max_tokens="ten"), "max_tokens"),
        (chat_body(max_tokens=-5), "max_tokens"),
        (chat_body(max_tokens=0), "max_tokens"),
        (chat_body(max_tokens=10**30), "max_tokens"),
        (chat_body(seed=2**70), "seed"),
        (chat_body(temperature="hot"), "temperature"),
        (chat_body(temperature=7), "temperature"),
        (chat_body(stream="yes please"), "stream"),
        ({"model": ALIAS, "messages": "hello"}, "messages"),
        ({"model": ALIAS, "messages": []}, "messages"),
        ({"model": 5, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ],
)
def test_wrong_types_and_ranges_name_the_field(
    target: ServedAlias, body: dict[str, Any], field: str
) -> None:
    error = error_of(post(target, "/v1/chat/completions", json=body), 400)
    assert field in error["message"]
    assert error["param"] == field
    assert error["code"] == "invalid_body"


def test_a_body_that_is_not_an_object(target: ServedAlias) -> None:
    for body in ([1, 2], "text", None, 3):
        error_of(post(target, "/v1/chat/completions", json=body), 400)


def test_unknown_alias_is_404_and_logged(target: ServedAlias) -> None:
    body = chat_body()
    body["model"] = "no-such-alias"
    error = error_of(post(target, "/v1/chat/completions", json=body), 404)
    assert error["code"] == "model_not_found"
    assert "no-such-alias" in error["message"]

    def logged() -> bool:
        with target.database.engine.connect() as conn:
            return bool(
                conn.execute(
                    text("SELECT count(*) FROM requests WHERE alias = 'no-such-alias'")
                ).scalar_one()
            )

    wait_for(logged)


def test_feedback_for_unknown_or_malformed_response_ids_is_404(target: ServedAlias) -> None:
    for response_id in (str(uuid.uuid4()), f"chatcmpl-{uuid.uuid4()}", "not-a-uuid", "\u00e9" * 40):
        body = {"response_id": response_id, "rating": -1}
        error = error_of(post(target, "/v1/feedback", json=body), 404)
        assert error["code"] == "not_found"
    error = error_of(post(target, "/v1/feedback", json={"response_id": "x", "rating": 5}), 400)
    assert "rating" in error["message"] and error["param"] == "rating"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat_body("a\u0000b"), "messages.[0].content"),
        (chat_body("lone \ud800 surrogate"), "messages.[0].content"),
        (chat_body("low \udc00 half"), "messages.[0].content"),
        (chat_body([{"type": "text", "text": "x\ud83d"}]), "messages.[0].content"),
        (chat_body("fine", user="u\u0000v"), "user"),
        (chat_body("fine", stop=["\ud800"]), "stop"),
        ({"model": ALIAS, "prompt": "nul\u0000"}, "prompt"),
    ],
)
def test_bad_text_is_a_400_naming_the_param_and_not_a_worker_failure(
    target: ServedAlias, body: dict[str, Any], param: str
) -> None:
    # json.dumps writes the lone surrogates as \ud800 escapes: valid JSON, invalid text.
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    error = error_of(post(target, path, content=raw, headers=headers), 400)
    assert error["param"] == param, error
    assert "NUL" in error["message"] or "surrogate" in error["message"]
    # The gateway still serves (no worker was marked failed).
    assert post(target, "/v1/chat/completions", json=chat_body()).status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [("comment", "x\0y"), ("comment", "x\ud800y"), ("user", "u\0"), ("response_id", "\0")],
)
def test_text_the_database_cannot_store_in_feedback_is_a_400_naming_it(
    target: ServedAlias, field: str, value: str
) -> None:
    answer = post(target, "/v1/chat/completions", json=chat_body("a b"))
    assert answer.status_code == 200, answer.text
    vote = {"response_id": answer.json()["id"], "rating": -1, field: value}
    headers = {"Content-Type": "application/json"}
    error = error_of(post(target, "/v1/feedback", content=json.dumps(vote), headers=headers), 400)
    assert error["param"] == field, error
    assert "NUL" in error["message"] or "surrogate" in error["message"]
    with target.database.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM feedback")).scalar_one() == 0


def test_unknown_paths_and_methods_answer_in_the_openai_shape(target: ServedAlias) -> None:
    error = error_of(httpx.get(f"{target.url}/v1/nothing-here", timeout=10), 404)
    assert error["code"] == "not_found"
    error = error_of(httpx.get(f"{target.url}/v1/chat/completions", timeout=10), 405)
    assert error["code"] == "method_not_allowed"


def test_a_vote_right_after_the_answer_always_finds_it(db_url: str, tmp_path: Path) -> None:
    # A flush every millisecond makes the vote race the background write as often as it can.
    with (
        served_alias(db_url, tmp_path, "race", log_flush_ms=1) as served,
        httpx.Client(base_url=served.url, timeout=30) as client,
    ):
        for i in range(120):
            body = {"model": "race", "messages": [{"role": "user", "content": f"q{i}"}]}
            if i % 2:
                with client.stream(
                    "POST", "/v1/chat/completions", json={**body, "stream": True}
                ) as stream:
                    lines = [line for line in stream.iter_lines() if line.startswith("data:")]
                assert lines[-1] == "data: [DONE]"
                response_id = json.loads(lines[0][5:])["id"]
            else:
                answer = client.post("/v1/chat/completions", json=body)
                assert answer.status_code == 200, answer.text
                response_id = answer.json()["id"]
            vote = client.post("/v1/feedback", json={"response_id": response_id, "rating": 1})
            assert vote.status_code == 200, (i, vote.text)
