"""The gateway's balancer with batch work in flight, against stub workers (real processes,
real HTTP) and a real PostgreSQL: a live call counts slots held by batch lines as free (the
worker's engine preempts them), a batch line counts them busy."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.batches.service import create_batch
from app.batches.store import BatchStore
from app.db.database import Database
from tests.gateway_harness import (
    GatewayThread,
    Stubs,
    StubWorker,
    add_deployment,
    add_model,
    gateway_settings,
    wait_for,
)

# Held calls stream nothing and take HELD_TOKENS * DELAY_MS; probes ask for PROBE_TOKENS.
HELD_TOKENS, DELAY_MS, PROBE_TOKENS = 80, 100, 2


@pytest.fixture
def stubs(db_url: str) -> Iterator[Stubs]:
    started = Stubs(db_url)
    yield started
    started.stop_all()


def _chat(url: str, headers: dict[str, str], max_tokens: int | None = None) -> httpx.Response:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def _priorities(stub: StubWorker) -> dict[str, int]:
    found: dict[str, int] = httpx.get(f"{stub.url}/stats", timeout=5).json()["priorities"]
    return found


def test_live_call_goes_to_the_worker_busy_with_batch_work_and_batch_lines_do_not(
    tmp_path: Path, db_url: str, database: Database, stubs: Stubs
) -> None:
    model = add_model(database.engine, "m.gguf")
    deployment = add_deployment(database.engine, "m", model)
    slow = {"slots": 1, "tokens": HELD_TOKENS, "token_delay_ms": DELAY_MS}
    workers = [
        stubs.start("m", name, deployment_id=deployment, model_id=model, **slow)
        for name in ("w1", "w2")
    ]
    settings = gateway_settings(tmp_path, db_url, gateway_queue_per_worker=0)
    # A batch that is not run: its runner credential marks calls as its lines.
    batch_id = create_batch(
        settings, database.engine, alias="m", bodies=[{"messages": []}], start=False
    )
    token = BatchStore(database.engine).runner_info(batch_id).runner_token
    batch = {"X-Herd-Batch": batch_id, "X-Herd-Batch-Token": token}
    gateway = GatewayThread(settings, db_url)
    try:
        gateway.wait_workers(2)
        with ThreadPoolExecutor(max_workers=2) as pool:
            held: list[Future[httpx.Response]] = [pool.submit(_chat, gateway.url, batch)]
            wait_for(lambda: sum(_priorities(w).get("batch", 0) for w in workers) == 1)
            batch_worker = next(w for w in workers if _priorities(w).get("batch"))
            live_worker = next(w for w in workers if w is not batch_worker)
            # An interactive call prefers the worker without batch work while both are free.
            held.append(pool.submit(_chat, gateway.url, {}))
            wait_for(lambda: _priorities(live_worker).get("", 0) == 1)
            assert gateway.health()["outstanding_requests"] == 2

            # Every slot is taken for a batch line: refused, nothing reaches a worker.
            refused = _chat(gateway.url, batch, PROBE_TOKENS)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "workers_busy"

            # A live call is placed on the slot the batch line holds (the engine preempts it).
            live = _chat(gateway.url, {}, PROBE_TOKENS)
            assert live.status_code == 200, live.text
            answer = live.json()["choices"][0]["message"]["content"]
            assert answer.startswith(f"{batch_worker.name} says:"), answer
            assert _priorities(batch_worker) == {"batch": 1, "": 1}
            assert _priorities(live_worker) == {"": 1}
            assert gateway.health()["outstanding_requests"] == 2
            assert [f.result(timeout=60).status_code for f in held] == [200, 200]
        assert gateway.health()["outstanding_requests"] == 0
    finally:
        gateway.stop()
