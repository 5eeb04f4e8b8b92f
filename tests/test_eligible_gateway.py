"""Through a real gateway (in this process) and a stub worker process: the request log keeps
each answer's finish_reason, streamed or not, and a dataset built after a batch, a cancelled
stream, answers cut at max_tokens and a refused call holds none of them, its card saying how
many were left out and why."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.datasets.build import BuildSpec, build_dataset
from app.datasets.cleaning import CleaningOptions
from app.datasets.selection import LogSelection, select_from_log
from app.datasets.splits import SplitRatios
from app.db.database import Database
from tests.batch_harness import chat_line, openai_client, wait_batch, write_jsonl
from tests.gateway_harness import (
    GatewayThread,
    Stubs,
    add_deployment,
    add_model,
    gateway_settings,
    wait_for,
)

ALIAS = "stubby"
TOKENS = 6  # the stub's whole answer; max_tokens below that cuts it
FULL = "stub says: w0 w1 w2 w3 w4"


@pytest.fixture
def gateway(tmp_path: Path, db_url: str) -> Iterator[tuple[GatewayThread, Database]]:
    database = Database(db_url)
    stubs = Stubs(db_url)
    gateway = None
    try:
        model_id = add_model(database.engine, "stubby.gguf")
        deployment_id = add_deployment(database.engine, ALIAS, model_id)
        stubs.start(
            ALIAS, "stub", deployment_id=deployment_id, model_id=model_id, tokens=TOKENS,
            token_delay_ms=100,
        )  # fmt: skip
        settings = gateway_settings(tmp_path, db_url, batch_watch_s=0.5)
        gateway = GatewayThread(settings, db_url)
        gateway.wait_workers(1)
        yield gateway, database
    finally:
        if gateway is not None:
            gateway.stop()
        stubs.stop_all()
        database.close()


def _call(url: str, content: str, **body: Any) -> str:
    """One chat call; the response id (the request row's; the prompt for a refused call,
    whose error carries no id)."""
    payload = {"model": ALIAS, "messages": [{"role": "user", "content": content}], **body}
    response = httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=30)
    if not body.get("stream"):
        return str(response.json().get("id", content))
    assert response.status_code == 200, response.text
    first = next(x for x in response.text.splitlines() if x.startswith("data: {"))
    return str(json.loads(first[6:])["id"])


def _cancelled_stream(url: str, content: str) -> str:
    """A streamed call the client leaves after the first token; its response id."""
    payload = {"model": ALIAS, "messages": [{"role": "user", "content": content}], "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    return str(event["id"])
    raise AssertionError("the stream ended before its first token")


def _logged(database: Database) -> dict[str, dict[str, Any]]:
    with database.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT r.id::text AS id, r.status, r.finish_reason, r.traffic_class, "
                "m.prompt, m.response FROM requests r LEFT JOIN messages m ON m.request_id = r.id"
            )
        ).mappings()
        return {row["id"]: dict(row) for row in rows}


def _row(logged: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    """The row of a response id, or of the call whose prompt was key."""
    if key in logged:
        return logged[key]
    [row] = [r for r in logged.values() if r["prompt"][-1]["content"] == key]
    return row


def test_finish_reason_is_logged_and_datasets_hold_real_turns_only(
    gateway: tuple[GatewayThread, Database], tmp_path: Path
) -> None:
    served, database = gateway
    url = served.url
    calls = {
        "plain": _call(url, "What is the capital of France?"),
        "plain_stream": _call(url, "Name a colour.", stream=True),
        "cut": _call(url, "Tell me a long story.", max_tokens=2),
        "cut_stream": _call(url, "Tell me another story.", max_tokens=2, stream=True),
        "refused": _call(url, "Too much.", max_tokens=999_999),  # the worker's 400
        "cancelled": _cancelled_stream(url, "What is the capital of Spain?"),
    }
    client = openai_client(served.v1)
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [chat_line(f"line-{i}", f"Batch question {i}?", model=ALIAS) for i in range(3)],
    )
    uploaded = client.files.create(file=source.open("rb"), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_batch(client, batch.id, timeout_s=120).request_counts.completed == 3
    # The gateway writes its request log in batches, off the request path.
    wait_for(lambda: len(_logged(database)) == len(calls) + 3, timeout_s=30, step_s=0.2)
    logged = _logged(database)
    got = {name: _row(logged, key) for name, key in calls.items()}
    assert {name: (row["status"], row["finish_reason"]) for name, row in got.items()} == {
        "plain": ("ok", "stop"),
        "plain_stream": ("ok", "stop"),
        "cut": ("ok", "length"),
        "cut_stream": ("ok", "length"),
        "refused": ("error", None),
        "cancelled": ("cancelled", None),
    }
    assert got["plain"]["response"] == got["plain_stream"]["response"] == FULL
    assert got["cut"]["response"] == got["cut_stream"]["response"] == "stub says: w0"
    lines = [row for row in logged.values() if row["id"] not in {r["id"] for r in got.values()}]
    assert {(r["traffic_class"], r["finish_reason"]) for r in lines} == {("batch", "length")}

    spec = BuildSpec(
        "from-traffic", "olivia", cleaning=CleaningOptions(near_dedup=False),
        ratios=SplitRatios(1, 0, 0),
    )  # fmt: skip
    info = build_dataset(
        database.engine,
        tmp_path / "datasets",
        spec,
        select_from_log(database.engine, LogSelection()),
    )
    train = tmp_path / "datasets" / "from-traffic" / "train.jsonl"
    rows = [json.loads(x) for x in train.read_text().splitlines()]
    assert {r["id"] for r in rows} == {calls["plain"], calls["plain_stream"]}
    assert {r["messages"][-1]["content"] for r in rows} == {FULL}
    assert info.card["excluded"] == {"batch": 3, "synthetic": 0, "cancelled": 1, "error": 1,
                                     "cut": 2}  # fmt: skip
    readme = (train.parent / "README.md").read_text()
    assert "left out as no real user turn: 3 batch, 1 cancelled, 1 error, 2 cut" in readme
    # Cut answers on request; a batch line stays out (it is no user turn even uncut).
    more = select_from_log(database.engine, LogSelection(include_cut=True))
    assert {r.id for r in more.rows} == {calls[k] for k in ("plain", "plain_stream", "cut",
                                                            "cut_stream")}  # fmt: skip
    assert uuid.UUID(calls["cut"])  # response ids are the request rows' ids
