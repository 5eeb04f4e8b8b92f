"""The admin API and the files and batches API fuzzed with schemathesis, as an admin key
would call them: a real gateway (uvicorn in a thread) on a real PostgreSQL, a real model in
the store. Whatever the body, path or query, the answer is never a 5xx, comes in time and
in the OpenAI error shape (tests/test_gateway_fuzz.py fuzzes /v1 without a key).

Bounded in time: a few dozen examples per operation and mode, under a minute in all."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable

from app.config import Settings
from app.control.audit import Actor, Via
from app.control.changes import Admin
from app.control.keys import KeyPolicy
from app.db.database import Database
from tests.conftest import PgServer, with_database, write_tiny_gguf
from tests.gateway_harness import GatewayThread, gateway_settings
from tests.test_gateway_fuzz import check_answer

# Examples per operation and generation mode.
EXAMPLES = 20
CALL_TIMEOUT_S = 15.0
FUZZED = ("/admin/v1", "/v1/files", "/v1/batches")


@pytest.fixture(scope="module")
def admin_target(
    pg_server: PgServer, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(gateway URL, admin key) on a database of its own with the tiny model in the store."""
    name = pg_server.create_database(template=migrated_template)
    home = tmp_path_factory.mktemp("admin-fuzz")
    url = with_database(pg_server.url, name)
    database = Database(url)
    gateway = None
    try:
        settings = Settings(home=home / "herd-home", database_url=url, models_dir=home / "models")
        admin = Admin(database.engine, settings)
        setup = Actor("setup", Via.CLI)
        admin.add_model(setup, write_tiny_gguf(home / "tiny.gguf"))
        key = admin.create_key(setup, "fuzz-admin", KeyPolicy(admin=True)).key
        gateway = GatewayThread(
            gateway_settings(
                home, url, models_dir=home / "models", batch_file_max_bytes=256 * 1024
            ),
            url,
        )
        yield gateway.url, key
    finally:
        if gateway is not None:
            gateway.stop()
        database.close()
        pg_server.drop_database(name)


def fuzz_operation(
    operation: Any, mode: schemathesis.GenerationMode, url: str, key: str,
    session: requests.Session,
) -> int:  # fmt: skip
    what = f"{operation.method.upper()} {operation.path} ({mode.value})"
    calls = 0
    auth = {"Authorization": f"Bearer {key}"}

    @hypothesis_settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        nonlocal calls
        started = time.monotonic()
        response = case.call(
            base_url=url, session=session, headers=auth, timeout=CALL_TIMEOUT_S + 5
        )
        calls += 1
        check_answer(response, time.monotonic() - started, f"{what}: {case.as_curl_command()}")

    try:
        fuzz()
    except Unsatisfiable:
        # Nothing in a call whose only parameters are plain strings in the path can be made
        # invalid (DELETE /admin/v1/keys/{name_or_id}).
        assert mode.value == "negative", what
        assert not operation.definition.raw.get("requestBody"), what
    return calls


def _operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    return [op for op in operations if op.path.startswith(FUZZED)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_admin_files_and_batches_fuzz_gets_no_5xx(
    admin_target: tuple[str, str], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, key = admin_target
    operations = _operations(url)
    paths = {op.path for op in operations}
    assert {"/admin/v1/deployments", "/admin/v1/keys", "/v1/files", "/v1/batches"} <= paths
    session = requests.Session()
    calls = sum(
        fuzz_operation(op, schemathesis.GenerationMode(mode), url, key, session)
        for op in operations
    )
    session.close()
    assert calls >= EXAMPLES * len(operations) // 2  # the fuzzer really called the gateway
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]


def test_the_upload_and_batch_bodies_are_described(admin_target: tuple[str, str]) -> None:
    url, _ = admin_target
    spec: dict[str, Any] = requests.get(f"{url}/openapi.json", timeout=10).json()
    upload = spec["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert set(upload["multipart/form-data"]["schema"]["properties"]) == {"purpose", "file"}
    batch = spec["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["application/json"]
    name = batch["schema"]["$ref"].rsplit("/", 1)[-1]
    assert spec["components"]["schemas"][name]["additionalProperties"] is False
