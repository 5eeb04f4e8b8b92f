"""End to end on real parts: `herd gateway` as a process in front of two `herd worker`
processes running llama.cpp on the SmolLM2 demo model; the official openai client."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import text

from app.db.database import Database
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model
from tests.conftest import stop_process
from tests.gateway_harness import Ledger, add_deployment, wait_for
from tests.worker_process import WorkerLauncher, WorkerProcess

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workers(
    worker_launcher: WorkerLauncher, database: Database, models_dir: Path
) -> list[WorkerProcess]:
    model = add_demo_model(ModelStore(database.engine, models_dir))
    deployment = add_deployment(database.engine, "smol", model.id)
    args = [
        "--model", model.name, "--alias", "smol", "--deployment-id", str(deployment),
        "--port", "0", "--n-ctx", "1024",
    ]  # fmt: skip
    started = [worker_launcher.start(*args) for _ in range(2)]
    for worker in started:
        worker.wait_ready(timeout_s=120)  # two shared cores, other test runs beside
    return started


@pytest.fixture
def gateway_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """`herd gateway --port 0` as a child process; its URL from the line it prints."""
    env = {
        **os.environ,
        "HERD_DATABASE_URL": db_url,
        "HERD_HOME": str(tmp_path / "gateway-home"),
        "HERD_GATEWAY_REFRESH_S": "0.2",
    }
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "gateway", "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline().decode() if ready else ""
        assert line.startswith("gateway: http://"), (tmp_path / "gateway.log").read_text()
        base = line.split()[1].removesuffix("/v1")
        wait_for(lambda: _healthy(base), 30)
        yield base
    finally:
        stop_process(process)
        log.close()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False  # the socket is bound before uvicorn serves on it


def test_openai_client_streams_and_not_through_the_gateway(
    workers: list[WorkerProcess], gateway_url: str, database: Database
) -> None:
    wait_for(lambda: httpx.get(f"{gateway_url}/health").json()["live_workers"] == 2)
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["smol"]

    answer = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=12,
        temperature=0,
    )
    assert answer.choices[0].message.content
    assert uuid.UUID(answer.id)
    assert answer.usage is not None and answer.usage.completion_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": "Count to five."}],
            max_tokens=16,
            stream=True,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip()
    assert len({c.id for c in chunks}) == 1
    stream_id = chunks[0].id

    vote = httpx.post(
        f"{gateway_url}/v1/feedback",
        json={"response_id": stream_id, "rating": -1, "comment": "too short", "user": "u1"},
    )
    assert vote.status_code == 200, vote.text
    with database.engine.connect() as conn:
        row = (
            conn.execute(
                text(
                    "SELECT r.status, r.worker_id, r.model_id, r.ttft_ms, r.tokens_per_second, "
                    "r.completion_tokens, m.response, f.rating, f.comment FROM requests r "
                    "JOIN messages m ON m.request_id = r.id JOIN feedback f ON f.request_id = r.id "
                    "WHERE r.id = :id"
                ),
                {"id": stream_id},
            )
            .mappings()
            .one()
        )
    assert row["status"] == "ok" and row["response"] == streamed
    assert row["worker_id"] in {w.row()["id"] for w in workers}  # type: ignore[index]
    assert row["ttft_ms"] > 0 and row["tokens_per_second"] > 0 and row["completion_tokens"] > 0
    assert (row["rating"], row["comment"]) == (-1, "too short")


def test_kill_9_of_a_real_worker_under_load(
    workers: list[WorkerProcess], gateway_url: str, database: Database
) -> None:
    wait_for(lambda: httpx.get(f"{gateway_url}/health").json()["live_workers"] == 2)
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="none", max_retries=0, timeout=120)
    both_streaming = threading.Barrier(3)

    def stream(i: int) -> str:
        first = True
        try:
            for chunk in client.chat.completions.create(
                model="smol",
                messages=[{"role": "user", "content": f"Tell a long story, number {i}."}],
                max_tokens=400,
                extra_body={"ignore_eos": True},
                stream=True,
            ):
                if first and chunk.choices and chunk.choices[0].delta.content:
                    first = False
                    both_streaming.wait(timeout=60)
        except openai.APIError:
            return "error"
        return "ok"

    def unary(i: int) -> str:
        answer = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": f"Say {i}."}], max_tokens=8
        )
        return "ok" if answer.choices[0].message.content is not None else "empty"

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        streams = [pool.submit(stream, i) for i in range(2)]
        both_streaming.wait(timeout=60)  # one stream on each worker (least outstanding)
        unaries = [pool.submit(unary, i) for i in range(2)]  # queued, one behind each stream
        time.sleep(0.5)
        os.kill(workers[0].pid, signal.SIGKILL)
        stream_outcomes = Counter(f.result(timeout=120) for f in streams)
        unary_outcomes = [f.result(timeout=120) for f in unaries]
    assert time.monotonic() - started < 120
    assert stream_outcomes == {"ok": 1, "error": 1}
    assert unary_outcomes == ["ok", "ok"]
    # The count check: the four calls, the one cut mid-stream included, have a row each.
    Ledger(answered=4).check(database.engine)
