"""API key scopes, expiry, per-key rate limits and daily token quotas, held across two real
`herd gateway` processes sharing one PostgreSQL; usage per key in SQL."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from app.analytics.key_usage import key_usage
from app.analytics.scope import Scope
from app.config import Settings
from app.control.audit import Actor, Via
from app.control.changes import Admin
from app.control.keys import KeyPolicy
from app.db.database import Database
from app.gateway.key_limits import KeyLimits, KeyRule
from app.openai_api.errors import ApiError
from tests.conftest import stop_process
from tests.gateway_harness import REPO, Stubs, add_deployment, add_model, wait_for

SETUP = Actor("test", Via.CLI)
# The stub worker answers every call with 7 prompt and 5 completion tokens.
TOKENS_PER_CALL = 12


class GatewayProcess:
    """`herd gateway --port 0` as its own process; base URL from the line it prints."""

    def __init__(self, db_url: str, home: Path) -> None:
        env = {**os.environ, "HERD_DATABASE_URL": db_url, "HERD_HOME": str(home),
               "HERD_GATEWAY_REFRESH_S": "0.2", "HERD_LOG_FLUSH_MS": "100"}  # fmt: skip
        home.mkdir(parents=True, exist_ok=True)
        self.log = (home / "gateway.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "gateway", "--port", "0"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 90)
        line = self.process.stdout.readline().decode() if ready else ""
        assert line.startswith("gateway: http://"), (home / "gateway.log").read_text()
        self.url = line.split()[1].removesuffix("/v1")

    def live_workers(self) -> int:
        try:
            return int(httpx.get(f"{self.url}/health", timeout=5).json()["live_workers"])
        except httpx.TransportError:
            return -1

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


@pytest.fixture
def two_gateways(
    database: Database, db_url: str, tmp_path: Path
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    stubs = Stubs(db_url)
    model = add_model(database.engine, "m.gguf")
    stubs.start("m", "w", deployment_id=add_deployment(database.engine, "m", model), model_id=model)
    other = add_model(database.engine, "o.gguf")
    stubs.start("o", "w2", deployment_id=add_deployment(database.engine, "o", other),
                model_id=other)  # fmt: skip
    gateways: list[GatewayProcess] = []
    try:
        for name in ("a", "b"):
            gateways.append(GatewayProcess(db_url, tmp_path / f"gateway-{name}"))
        for g in gateways:
            wait_for(lambda g=g: g.live_workers() == 2, 60)
        yield gateways[0], gateways[1]
    finally:
        for g in gateways:
            g.stop()
        stubs.stop_all()


def call(base: str, key: str, alias: str = "m") -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": alias, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def usage_rows(database: Database, key_id: int) -> tuple[int, int]:
    with database.engine.connect() as conn:
        row = conn.execute(
            text("SELECT coalesce(sum(requests), 0), coalesce(sum(tokens), 0) "
                 "FROM api_key_usage WHERE api_key_id = :k"), {"k": key_id},
        ).one()  # fmt: skip
    return int(row[0]), int(row[1])


def settled(database: Database, key_id: int, requests: int, tokens: int = 0) -> None:
    """Until the database holds the key's counts, then long enough for every gateway to
    read them back (syncs run every 0.2 s here)."""

    def reached() -> bool:
        found = usage_rows(database, key_id)
        return found[0] >= requests and found[1] >= tokens

    wait_for(reached, 15)
    time.sleep(0.6)


def test_limits_and_quotas_hold_across_two_gateway_processes(
    two_gateways: tuple[GatewayProcess, GatewayProcess],
    database: Database,
    settings: Settings,
) -> None:
    a, b = two_gateways
    admin = Admin(database.engine, settings)
    rpm = admin.create_key(SETUP, "rpm", KeyPolicy(scopes=("m",), rate_limit_rpm=4))
    quota = admin.create_key(SETUP, "quota", KeyPolicy(daily_token_quota=3 * TOKENS_PER_CALL))
    expired = admin.create_key(
        SETUP, "old", KeyPolicy(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )

    # Scope: the key may call alias m only; 403 in the OpenAI error shape (and not counted).
    for gateway in (a, b):
        wait_for(lambda g=gateway: call(g.url, rpm.key, alias="o").status_code == 403)
    refused = call(a.url, rpm.key, alias="o")
    assert refused.json()["error"]["code"] == "alias_not_in_key_scope"
    # Every endpoint is admitted alike: embeddings too.
    embedded = httpx.post(
        f"{a.url}/v1/embeddings",
        json={"model": "o", "input": "hi"},
        headers={"Authorization": f"Bearer {rpm.key}"},
        timeout=30,
    )
    assert embedded.status_code == 403, embedded.text
    assert embedded.json()["error"]["code"] == "alias_not_in_key_scope"
    assert usage_rows(database, rpm.id) == (0, 0)

    # Requests per minute, shared: 4 per minute across both gateways together. Start early
    # in a minute so that all calls fall into the same one.
    if datetime.now(UTC).second > 30:
        wait_for(lambda: datetime.now(UTC).second < 3, 40, step_s=0.2)
    statuses = []
    for gateway in (a, b, a, b, a, b):
        statuses.append(call(gateway.url, rpm.key).status_code)
        settled(database, rpm.id, statuses.count(200))
    assert statuses == [200, 200, 200, 200, 429, 429]
    last = call(b.url, rpm.key)
    assert last.status_code == 429, last.text
    assert last.json()["error"]["type"] == "rate_limit_error"
    assert last.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(last.headers["Retry-After"]) <= 60

    # Daily token quota: 3 calls' worth of tokens, spent on both gateways; then 429.
    statuses = []
    for gateway in (a, b, a, b):
        statuses.append(call(gateway.url, quota.key).status_code)
        answered = statuses.count(200)
        settled(database, quota.id, answered, answered * TOKENS_PER_CALL)
    assert statuses == [200, 200, 200, 429]
    for gateway in (a, b):
        over = call(gateway.url, quota.key)
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "daily_token_quota_exceeded"
        assert int(over.headers["Retry-After"]) > 0
    assert usage_rows(database, quota.id)[1] == 3 * TOKENS_PER_CALL

    # An expired key is no key: 401.
    assert call(a.url, expired.key).status_code == 401

    # Usage per key is plain SQL.
    with database.engine.connect() as conn:
        per_key = {
            name: int(tokens)
            for name, tokens in conn.execute(
                text(
                    "SELECT k.name, sum(u.tokens) FROM api_key_usage u "
                    "JOIN api_keys k ON k.id = u.api_key_id GROUP BY k.name"
                )
            )
        }
    assert per_key == {"rpm": 4 * TOKENS_PER_CALL, "quota": 3 * TOKENS_PER_CALL}
    # ... and what the Monitoring page shows per key.
    now = datetime.now(UTC)
    shown = {
        r["name"]: (r["requests"], r["tokens"], r["tokens_today"], r["daily_token_quota"])
        for r in key_usage(database.engine, Scope(now - timedelta(hours=1), now + timedelta(1)))
    }
    assert shown["quota"] == (3, 3 * TOKENS_PER_CALL, 3 * TOKENS_PER_CALL, 3 * TOKENS_PER_CALL)
    assert shown["rpm"][:2] == (4, 4 * TOKENS_PER_CALL)
    assert shown["old"] == (0, 0, 0, None)


def test_counts_of_one_replica_reach_another_through_the_database(database: Database) -> None:
    """Unit-level: two KeyLimits (two replicas) sharing api_key_usage."""
    with database.engine.begin() as conn:
        key_id = conn.execute(
            text("INSERT INTO api_keys (name, key_hash, prefix) VALUES ('k', 'h', 'p') "
                 "RETURNING id")
        ).scalar_one()  # fmt: skip
    rule = KeyRule(scopes=None, rpm=3, tpm=None, daily_tokens=None)
    now = 1_800_000_000.0 + 5  # 5 s into a minute
    first, second = KeyLimits(), KeyLimits()
    first.admit(key_id, rule, "m", now)
    first.admit(key_id, rule, "m", now)
    first.sync(database.engine, {key_id}, now)
    second.sync(database.engine, {key_id}, now)
    second.admit(key_id, rule, "m", now)
    with pytest.raises(ApiError) as caught:
        second.admit(key_id, rule, "m", now)
    assert (caught.value.status, caught.value.retry_after_s) == (429, 55)
    # The next minute starts afresh.
    second.admit(key_id, rule, "m", now + 60)
