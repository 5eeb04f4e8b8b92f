"""The gateway's OpenAPI fuzzed with schemathesis: a real gateway (uvicorn in a thread) with a
real stub worker process behind it and a real PostgreSQL. Whatever the body, headers or
path, the gateway answers in time, never with a 5xx, and every error in the OpenAI shape."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests.conftest import PgServer, with_database
from tests.gateway_harness import ServedAlias, served_alias

ALIAS = "fuzz"
# Examples per operation and generation mode; enough to find shape and type holes quickly.
EXAMPLES = 100
# A call that takes longer than this counts as a hang.
CALL_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def fuzz_target(
    pg_server: PgServer, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedAlias]:
    name = pg_server.create_database(template=migrated_template)
    try:
        url = with_database(pg_server.url, name)
        with served_alias(url, tmp_path_factory.mktemp("fuzz"), ALIAS, "fuzzer") as target:
            yield target
    finally:
        pg_server.drop_database(name)


# What uvicorn answers, before any app code runs, to bytes that are not HTTP (the negative
# fuzz sometimes generates such a header): not an answer of Herd's to hold to its error shape.
UVICORN_REFUSED = "Invalid HTTP request received."


def check_answer(response: httpx.Response | Any, elapsed_s: float, what: str) -> None:
    """No 5xx, no hang, errors as {"error": {"message", "type", "code"}}."""
    assert elapsed_s < CALL_TIMEOUT_S, f"{what}: took {elapsed_s:.1f} s"
    status = response.status_code
    assert status < 500, f"{what}: HTTP {status}: {response.text[:500]}"
    if status == 400 and response.text == UVICORN_REFUSED:
        return  # refused by uvicorn's HTTP parser: the request never reached Herd's app
    if status >= 400:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), (
            f"{what}: HTTP {status} without an OpenAI error body: {response.text[:500]}"
        )
        error = body["error"]
        assert {"message", "type", "code"} <= set(error), f"{what}: {error}"
        assert isinstance(error["message"], str) and error["message"], f"{what}: {error}"
        assert isinstance(error["type"], str) and error["type"], f"{what}: {error}"


def _operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/feedback"}
    return operations


def fuzz_operation(
    operation: Any, mode: schemathesis.GenerationMode, url: str, session: requests.Session
) -> int:
    """Call the gateway with EXAMPLES generated cases of one operation; how many were sent."""
    what = f"{operation.method.upper()} {operation.path} ({mode.value})"
    calls = 0

    @hypothesis_settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode), real_alias=st.booleans())
    def fuzz(case: Any, real_alias: bool) -> None:
        nonlocal calls
        body = case.body
        # Half the completions name the served alias, so they reach the stub worker.
        if real_alias and isinstance(body, dict) and "model" in body:
            body["model"] = ALIAS
        started = time.monotonic()
        response = case.call(base_url=url, session=session, timeout=CALL_TIMEOUT_S + 5)
        calls += 1
        check_answer(response, time.monotonic() - started, f"{what}: {case.as_curl_command()}")

    try:
        fuzz()
    except Unsatisfiable:
        # Nothing in a call without a body whose only parameters are plain strings in the
        # path (GET /health, DELETE /admin/v1/keys/{name_or_id}) can be made invalid.
        raw = operation.definition.raw
        assert mode.value == "negative", what
        assert not raw.get("requestBody"), what
        for parameter in raw.get("parameters", []):
            assert parameter["in"] == "path", what
            assert {k: v for k, v in parameter["schema"].items() if k != "title"} == {
                "type": "string"
            }, what
    return calls


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_fuzz_gets_no_5xx_and_openai_errors(
    fuzz_target: ServedAlias, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    session = requests.Session()
    calls = sum(
        fuzz_operation(op, schemathesis.GenerationMode(mode), fuzz_target.url, session)
        for op in _operations(fuzz_target.url)
    )
    session.close()
    assert calls >= EXAMPLES  # the fuzzer really called the gateway
    # Let the request log write what the fuzzer sent: no row may be refused (a NUL
    # character in a prompt once cost the whole row).
    time.sleep(0.5)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]


def test_gateway_still_serves_after_fuzzing(fuzz_target: ServedAlias) -> None:
    body = {"model": ALIAS, "messages": [{"role": "user", "content": "still there?"}]}
    response = httpx.post(f"{fuzz_target.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("fuzzer says:")
