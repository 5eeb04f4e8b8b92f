"""Real parts for batch tests: a gateway (in this process) in front of a real `herd worker`
on the SmolLM2 demo model, and helpers to write batch input files and read results."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai

from app.db.database import Database
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model
from tests.gateway_harness import GatewayThread, add_deployment, gateway_settings
from tests.worker_process import WorkerLauncher, WorkerProcess

ALIAS = "smol"


def chat_line(
    custom_id: str,
    content: str = "Say hi",
    *,
    model: str = ALIAS,
    url: str = "/v1/chat/completions",
    max_tokens: int = 2,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0}
    if url == "/v1/completions":
        body["prompt"] = content
    else:
        body["messages"] = [{"role": "user", "content": content}]
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def write_jsonl(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def start_demo_worker(
    launcher: WorkerLauncher, database: Database, models_dir: Path, *, parallel: int = 2
) -> tuple[WorkerProcess, list[str]]:
    """A real worker on the demo model behind ALIAS; (the worker, its start arguments)."""
    model = add_demo_model(ModelStore(database.engine, models_dir))
    deployment = add_deployment(database.engine, ALIAS, model.id)
    args = [
        "--model",
        model.name,
        "--alias",
        ALIAS,
        "--deployment-id",
        str(deployment),
        "--port",
        "0",
        "--n-ctx",
        "512",
        "--parallel",
        str(parallel),
    ]
    worker = launcher.start(*args)
    worker.wait_ready(timeout_s=180)
    return worker, args


def openai_client(base_url: str) -> openai.OpenAI:
    """The official client on base_url (".../v1"), no key, no retries: a test sees each answer."""
    return openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)


@contextmanager
def batch_gateway(tmp_path: Path, db_url: str, **overrides: Any) -> Iterator[GatewayThread]:
    settings = gateway_settings(
        tmp_path, db_url, job_heartbeat_s=0.2, job_stale_s=5, batch_watch_s=0.5, **overrides
    )
    gateway = GatewayThread(settings, db_url)
    try:
        yield gateway
    finally:
        gateway.stop()


def wait_batch(client: Any, batch_id: str, timeout_s: float = 240) -> Any:
    """Poll with the openai client until the batch is final; the batch."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout_s} s")
        time.sleep(0.5)
