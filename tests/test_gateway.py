"""The gateway against stub workers (real processes, real HTTP) and a real PostgreSQL:
weighted splits, affinity, failover after kill -9, cache, feedback, API keys, errors."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text

from app.control.aliases import AliasSettings, AliasStore
from app.control.keys import ApiKeys
from app.db.database import Database
from tests.gateway_harness import (
    GatewayThread,
    Stubs,
    add_deployment,
    add_model,
    gateway_settings,
    wait_for,
)

MakeGateway = Callable[..., GatewayThread]


@pytest.fixture
def stubs(db_url: str) -> Iterator[Stubs]:
    started = Stubs(db_url)
    yield started
    started.stop_all()


@pytest.fixture
def make_gateway(tmp_path: Path, db_url: str) -> Iterator[MakeGateway]:
    gateways: list[GatewayThread] = []

    def make(**overrides: Any) -> GatewayThread:
        gateway = GatewayThread(gateway_settings(tmp_path, db_url, **overrides), db_url)
        gateways.append(gateway)
        return gateway

    yield make
    for gateway in gateways:
        gateway.stop()


def chat(base: str, content: str = "hi", **extra: Any) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)


def answer_text(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


def rows(database: Database, sql: str, **params: Any) -> list[dict[str, Any]]:
    with database.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def wait_rows(database: Database, n: int, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """All request rows, once there are n."""
    wait_for(lambda: len(rows(database, "SELECT id FROM requests")) >= n, timeout_s)
    return rows(database, "SELECT * FROM requests ORDER BY created_at")


def test_weighted_split_records_the_model_served(
    database: Database, stubs: Stubs, make_gateway: MakeGateway
) -> None:
    v1, v2 = add_model(database.engine, "v1.gguf"), add_model(database.engine, "v2.gguf")
    stable = add_deployment(database.engine, "m", v1, weight=80)
    canary = add_deployment(database.engine, "m", v2, weight=20)
    stubs.start("m", "stable", deployment_id=stable, model_id=v1)
    stubs.start("m", "canary", deployment_id=canary, model_id=v2)
    gateway = make_gateway()
    gateway.wait_workers(2)

    served = Counter(answer_text(chat(gateway.url)).split()[0] for _ in range(100))
    assert abs(served["stable"] - 80) <= 5, served
    assert abs(served["canary"] - 20) <= 5, served

    logged = wait_rows(database, 100)
    by_model = Counter(r["model_id"] for r in logged)
    assert by_model == {v1: served["stable"], v2: served["canary"]}
    assert {r["deployment_id"] for r in logged} == {stable, canary}
    assert all(r["status"] == "ok" and r["worker_id"] is not None for r in logged)


def test_session_affinity_keeps_a_session_on_one_worker(
    database: Database, stubs: Stubs, make_gateway: MakeGateway
) -> None:
    model = add_model(database.engine, "m.gguf")
    deployment = add_deployment(database.engine, "m", model)
    for name in ("a", "b"):
        stubs.start("m", name, deployment_id=deployment, model_id=model)
    gateway = make_gateway()
    gateway.wait_workers(2)

    seen: dict[str, set[str]] = {}
    for turn in range(4):
        for session in range(8):
            user = f"user-{session}"
            response = chat(gateway.url, f"turn {turn}", user=user)
            seen.setdefault(user, set()).add(answer_text(response).split()[0])
            header = f"header-{session}"
            response = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                headers={"X-Session-Id": header},
                timeout=30,
            )
            seen.setdefault(header, set()).add(answer_text(response).split()[0])
    assert all(len(workers) == 1 for workers in seen.values()), seen
    # New sessions still spread over both workers.
    assert set().union(*seen.values()) == {"a", "b"}
    logged = wait_rows(database, 64)
    assert {r["session_id"] for r in logged} == set(seen)
    assert {r["user_id"] for r in logged if r["user_id"]} == {f"user-{i}" for i in range(8)}


def test_kill_9_retries_unstarted_calls_and_errors_started_streams(
    database: Database, stubs: Stubs, make_gateway: MakeGateway
) -> None:
    model = add_model(database.engine, "m.gguf")
    deployment = add_deployment(database.engine, "m", model)
    # 40 tokens, 50 ms apart: each answer takes about 2 s.
    victim = stubs.start("m", "victim", deployment_id=deployment, model_id=model,
                         tokens=40, token_delay_ms=50)  # fmt: skip
    stubs.start("m", "survivor", deployment_id=deployment, model_id=model,
                tokens=40, token_delay_ms=50)  # fmt: skip
    gateway = make_gateway()
    gateway.wait_workers(2)
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0, timeout=60)
    streaming_started = threading.Barrier(5)

    def stream(i: int) -> tuple[str, str]:
        text, first = "", True
        try:
            for chunk in client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"s{i}"}], stream=True
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    if first:
                        first = False
                        streaming_started.wait(timeout=30)
        except openai.APIError as exc:
            return "error", f"{text} | {exc}"
        return "ok", text

    def unary(i: int) -> tuple[str, str]:
        response = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"u{i}"}]
        )
        return "ok", response.choices[0].message.content or ""

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=12) as pool:
        streams = [pool.submit(stream, i) for i in range(4)]
        streaming_started.wait(timeout=30)  # four streams are under way, on both workers
        unaries = [pool.submit(unary, i) for i in range(6)]
        time.sleep(0.3)  # the unary calls are in flight too
        victim.kill9()
        stream_results = [f.result(timeout=60) for f in streams]
        unary_results = [f.result(timeout=60) for f in unaries]
    assert time.monotonic() - started < 30, "something hung"

    # Calls that had not streamed anything yet were retried on the survivor.
    assert all(status == "ok" for status, _ in unary_results)
    assert all(text.startswith("survivor says:") for _, text in unary_results)
    # Streams already under way on the victim end with an error event; the others finish.
    outcomes = Counter(status for status, _ in stream_results)
    assert outcomes["error"] >= 1 and outcomes["ok"] >= 1, stream_results
    for status, got in stream_results:
        if status == "error":
            assert got.startswith("victim says:") and "failed mid-answer" in got
        else:
            assert got.startswith("survivor says:") and got.endswith("w38")
    # And afterwards everything goes to the survivor.
    for _ in range(3):
        assert answer_text(chat(gateway.url)).startswith("survivor says:")

    logged = wait_rows(database, 13)
    assert len(logged) == 13
    statuses = Counter(r["status"] for r in logged)
    assert statuses == {"ok": 13 - outcomes["error"], "error": outcomes["error"]}
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert f'herd_gateway_upstream_errors_total{{worker="{victim.worker_id}"' in metrics


def test_cache_hit_is_answered_without_the_worker(
    database: Database, stubs: Stubs, make_gateway: MakeGateway
) -> None:
    model = add_model(database.engine, "m.gguf")
    deployment = add_deployment(database.engine, "m", model)
    stub = stubs.start("m", "w", deployment_id=deployment, model_id=model)
    gateway = make_gateway()
    gateway.wait_workers(1)

    first = chat(gateway.url, "same", temperature=0)
    again = chat(gateway.url, "same", temperature=0)
    assert stub.served() == 1
    assert answer_text(again) == answer_text(first)
    assert again.json()["id"] != first.json()["id"]
    # Streamed, the cached answer arrives as SSE, and still without the worker.
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "same"}], temperature=0, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces) == answer_text(first)
    assert stub.served() == 1
    # Same prompt, other sampling parameters, or not deterministic: the worker answers.
    chat(gateway.url, "same", temperature=0, max_tokens=3)
    chat(gateway.url, "same", temperature=0.7)
    chat(gateway.url, "same", temperature=0.7)
    assert stub.served() == 4
    # A fixed seed is deterministic too.
    chat(gateway.url, "seeded", temperature=0.9, seed=7)
    chat(gateway.url, "seeded", temperature=0.9, seed=7)
    assert stub.served() == 5

    logged = wait_rows(database, 8)
    hits = [r for r in logged if r["cache_hit"]]
    assert len(hits) == 3
    assert all(r["worker_id"] is None and r["model_id"] == model for r in hits)
    assert all(r["status"] == "ok" and r["completion_tokens"] == 5 for r in hits)

    # Turned off for the alias (gateways pick it up within a refresh): no more hits.
    AliasStore(database.engine).put("m", AliasSettings(cache_enabled=False, cache_ttl_s=60))
    wait_for(lambda: chat(gateway.url, "same", temperature=0) is not None and stub.served() > 5)


def test_text_logging_off_keeps_metrics_but_no_text(
    database: Database, stubs: Stubs, make_gateway: MakeGateway
) -> None:
    model = add_model(database.engine, "m.gguf")
    deployment = add_deployment(database.engine, "m", model)
    stubs.start("m", "w", deployment_id=deployment, model_id=model)
    gateway = make_gateway()
    gateway.wait_workers(1)
    logged_id = chat(gateway.url, "keep me").json()["id"]
    AliasStore(database.engine).put(
        "m", AliasSettings(cache_enabled=True, cache_ttl_s=60, log_text=False)
    )
    time.sleep(1.0)  # a few refreshes
    secret_id = chat(gateway.url, "secret").json()["id"]
    wait_rows(database, 2)
    messages = rows(database, "SELECT request_id, prompt, response FROM messages")
    assert [str(m["request_id"]) for m in messages] == [logged_id]
    assert messages[0]["prompt"] == [{"role": "user", "content": "keep me"}]
    assert messages[0]["response"].startswith("w says:")
    secret = rows(database, "SELECT * FROM requests WHERE id = :i", i=secret_id)[0]
    assert secret["status"] == "ok" and secret["completion_tokens"] == 5


def test_feedback_upserts_per_user_and_refuses_unknown_or_bad(
    database: Database, stubs: Stubs, make_gateway: MakeGateway
) -> None:
    model = add_model(database.engine, "m.gguf")
    deployment = add_deployment(database.engine, "m", model)
    stubs.start("m", "w", deployment_id=deployment, model_id=model)
    gateway = make_gateway(log_flush_ms=5000)  # the click must not wait for the batch
    gateway.wait_workers(1)
    response_id = chat(gateway.url).json()["id"]
    url = f"{gateway.url}/v1/feedback"

    first = httpx.post(url, json={"response_id": response_id, "rating": 1}, timeout=10)
    assert first.status_code == 200, first.text
    again = httpx.post(
        url, json={"response_id": response_id, "rating": -1, "comment": "wrong"}, timeout=10
    )
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = httpx.post(
        url, json={"response_id": response_id, "rating": 1, "user": "ann"}, timeout=10
    )
    assert other.status_code == 200
    stored = rows(database, "SELECT rating, comment, user_id FROM feedback ORDER BY user_id")
    assert stored == [
        {"rating": -1, "comment": "wrong", "user_id": ""},
        {"rating": 1, "comment": None, "user_id": "ann"},
    ]

    unknown = httpx.post(url, json={"response_id": str(uuid.uuid4()), "rating": 1}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert httpx.post(url, json={"response_id": "nope", "rating": 1}).status_code == 404
    for bad in (
        {"response_id": response_id, "rating": 2},
        {"response_id": response_id},
        {"rating": 1},
        {"response_id": response_id, "rating": 1, "surprise": True},
    ):
        refused = httpx.post(url, json=bad, timeout=10)
        # 400 naming the field, as OpenAI answers a bad body.
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["type"] == "invalid_request_error"
        assert refused.json()["error"]["param"] in ("rating", "response_id", "surprise"), bad
    assert httpx.post(url, content=b"not json", timeout=10).status_code == 400


def test_api_keys_401_then_200_and_recorded(
    database: Database, stubs: Stubs, make_gateway: MakeGateway
) -> None:
    model = add_model(database.engine, "m.gguf")
    deployment = add_deployment(database.engine, "m", model)
    stubs.start("m", "w", deployment_id=deployment, model_id=model)
    gateway = make_gateway()
    gateway.wait_workers(1)
    assert chat(gateway.url).status_code == 200  # no key exists yet: open

    keys = ApiKeys(database.engine)
    created = keys.create("app")
    assert created.key not in json.dumps(rows(database, "SELECT * FROM api_keys"), default=str)
    wait_for(lambda: chat(gateway.url).status_code == 401)
    refused = chat(gateway.url)
    assert refused.json()["error"]["type"] == "authentication_error"
    wrong = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": "Bearer herd-not-a-key"},
        timeout=10,
    )
    assert wrong.status_code == 401
    client = openai.OpenAI(base_url=gateway.v1, api_key=created.key, max_retries=0)
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert answer.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.v1, api_key="herd-wrong", max_retries=0).models.list()

    query = "SELECT api_key_id FROM requests WHERE id = :i"
    wait_for(lambda: bool(rows(database, query, i=answer.id)))
    assert rows(database, query, i=answer.id) == [{"api_key_id": created.id}]
    wait_for(lambda: keys.list()[0].last_used_at is not None)

    keys.revoke("app")
    wait_for(lambda: _status(client) == 401)


def _status(client: openai.OpenAI) -> int:
    try:
        client.models.list()
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_require_api_key_refuses_calls_before_any_key_exists(
    database: Database, make_gateway: MakeGateway
) -> None:
    gateway = make_gateway(require_api_key=True)
    assert chat(gateway.url).status_code == 401
    assert httpx.get(f"{gateway.url}/health").status_code == 200


def test_unknown_alias_404_no_worker_503_busy_429_all_logged(
    database: Database, stubs: Stubs, make_gateway: MakeGateway
) -> None:
    model = add_model(database.engine, "m.gguf")
    add_deployment(database.engine, "empty", model)
    deployment = add_deployment(database.engine, "m", model)
    stubs.start("m", "w", deployment_id=deployment, model_id=model,
                slots=1, tokens=20, token_delay_ms=100)  # fmt: skip
    gateway = make_gateway(gateway_queue_per_worker=0)
    gateway.wait_workers(1)

    unknown = chat(gateway.url, model="nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    empty = chat(gateway.url, model="empty")
    assert empty.status_code == 503 and empty.headers["Retry-After"] == "1"
    assert "no live worker" in empty.json()["error"]["message"]

    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(chat, gateway.url)
        wait_for(lambda: gateway.health()["outstanding_requests"] == 1)
        refused = chat(gateway.url)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert busy.result(timeout=30).status_code == 200

    models = httpx.get(f"{gateway.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["empty", "m"]
    logged = wait_rows(database, 4)
    assert Counter((r["status"], r["http_status"]) for r in logged) == {
        ("rejected", 404): 1,
        ("rejected", 503): 1,
        ("rejected", 429): 1,
        ("ok", 200): 1,
    }


def test_worker_errors_pass_through_and_completions_work(
    database: Database, stubs: Stubs, make_gateway: MakeGateway
) -> None:
    model = add_model(database.engine, "m.gguf")
    deployment = add_deployment(database.engine, "m", model)
    stubs.start("m", "w", deployment_id=deployment, model_id=model)
    gateway = make_gateway()
    gateway.wait_workers(1)

    bad = chat(gateway.url, max_tokens=999_999)  # the stub refuses this, like a real worker
    assert bad.status_code == 400 and "too large" in bad.json()["error"]["message"]
    invalid = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "m"}, timeout=10)
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "messages"

    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    completion = client.completions.create(model="m", prompt="Once")
    assert completion.choices[0].text.startswith("w says:")
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(model="m", prompt="x", stream=True)
    )
    assert streamed.startswith("w says:")
    logged = wait_rows(database, 3)
    assert Counter(r["endpoint"] for r in logged) == {"chat.completions": 1, "completions": 2}
    assert [r["http_status"] for r in logged if r["status"] == "error"] == [400]


def test_metrics_health_and_openapi(
    database: Database, stubs: Stubs, make_gateway: MakeGateway
) -> None:
    model = add_model(database.engine, "m.gguf")
    deployment = add_deployment(database.engine, "m", model)
    stubs.start("m", "w", deployment_id=deployment, model_id=model)
    gateway = make_gateway()
    gateway.wait_workers(1)
    chat(gateway.url, temperature=0)
    chat(gateway.url, temperature=0)
    # Aliases clients make up never become label values: one series, "unknown", for all.
    for made_up in ("nope", "x" * 200):
        missing = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": made_up, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert missing.status_code == 404

    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert (
        'herd_gateway_requests_total{alias="m",model="m.gguf",outcome="ok",status="ok",'
        'traffic_class="live"} 2' in metrics
    )
    # A 404 is the client's mistake, as the dashboard's "Client errors" counts it.
    assert (
        'herd_gateway_requests_total{alias="unknown",model="",outcome="client_error",'
        'status="rejected",traffic_class="live"} 2' in metrics
    )
    assert "nope" not in metrics and "xxxx" not in metrics
    # Client strings have length limits.
    for field in ("model", "user"):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], field: "x" * 257}
        too_long = httpx.post(f"{gateway.url}/v1/chat/completions", json=body)
        assert too_long.status_code == 400 and too_long.json()["error"]["param"] == field
    too_long = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"X-Session-Id": "s" * 257},
    )
    assert too_long.status_code == 400 and "X-Session-Id" in too_long.json()["error"]["message"]
    assert 'herd_gateway_cache_hits_total{alias="m"} 1' in metrics
    assert (
        'herd_gateway_ttft_seconds_count{alias="m",model="m.gguf",traffic_class="live"} 2'
        in metrics
    )
    assert "herd_gateway_outstanding_requests 0" in metrics
    for line in metrics.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2
    health = gateway.health()
    assert health["status"] == "ok" and health["database"] == "ok" and health["aliases"] == ["m"]
    paths = httpx.get(f"{gateway.url}/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/feedback"} <= set(paths)


def test_keys_cli_create_list_revoke(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import main

    monkeypatch.setenv("HERD_DATABASE_URL", db_url)
    monkeypatch.setenv("HERD_HOME", str(tmp_path / "home"))
    assert main(["keys", "create", "ci"]) == 0
    created = capsys.readouterr()
    key = next(line for line in created.out.splitlines() if line.startswith("herd-"))
    assert "shown once" in created.err
    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert key[:12] in listing and key not in listing and "active" in listing
    assert main(["keys", "create", "ci"]) == 1  # an active key has that name
    capsys.readouterr()
    assert main(["keys", "revoke", "ci"]) == 0
    assert main(["keys", "revoke", "ci"]) == 1
    assert main(["keys", "list", "--json"]) == 0
    assert '"revoked_at": null' not in capsys.readouterr().out
