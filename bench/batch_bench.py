"""Batch path overhead: the same requests sent straight to a worker by a client keeping every
slot busy (the engine's aggregate tokens/s at that slot count), and as a batch through the
gateway (openai client: upload, create, poll), side by side in one run.

    PYTHONPATH=. flock /tmp/herd-bench.lock python bench/batch_bench.py \
        --requests 48 --max-tokens 32 --parallel 4 --threads 2 --repeat 2

Ratio = batch tokens/s / direct tokens/s (completion tokens over wall time). "batch, end to
end" times upload to completed as a client sees it (runner process start and the poll
included); "batch, sending" times in_progress_at to completed_at (the runner's own work).
The runner keeps `--concurrency` lines in flight (HERD_BATCH_CONCURRENCY; default as many as
slots).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
ALIAS = "batch-bench"


def bodies(count: int, max_tokens: int, seed: int) -> list[dict[str, Any]]:
    # Distinct prompts: the gateway's response cache must not answer any of them.
    return [
        {"model": ALIAS, "prompt": f"Story {seed}-{i}: once upon a time", "max_tokens": max_tokens,
         "temperature": 0.8, "seed": seed * 1000 + i, "ignore_eos": True}
        for i in range(count)
    ]  # fmt: skip


def wait_http(url: str, path: str = "/health", timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url}{path} not ready")


@contextmanager
def herd(args: argparse.Namespace, stack: ExitStack) -> Iterator[tuple[str, str]]:
    """A worker on the demo model and a gateway in front of it; (worker URL, gateway URL)."""
    from gateway_bench import WORK, free_port, fresh_database, running

    from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
    from app.db import migrate
    from app.db.embedded import EmbeddedPostgres
    from app.db.engine import make_engine
    from app.store.catalog import ModelStore
    from app.store.demo import find_demo_model

    folder = WORK / f"batch-{time.strftime('%Y%m%dT%H%M%S')}"
    folder.mkdir(parents=True)
    embedded = EmbeddedPostgres(WORK / "herd-home" / "pgdata")
    stack.callback(embedded.release)
    db_url = stack.enter_context(fresh_database(embedded.start()))
    migrate.upgrade(db_url)
    db = make_engine(db_url)
    stack.callback(db.dispose)
    model = ModelStore(db, folder / "models").add(find_demo_model().path)
    serving = ServingSettings(model=model.name, n_ctx=args.n_ctx, threads=args.threads,
                              parallel=args.parallel)  # fmt: skip
    deployment = Deployments(db).create(DeploymentRequest(alias=ALIAS, serving=serving))
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "HERD_DATABASE_URL": db_url,
        "HERD_HOME": str(folder / "herd-home"), "HERD_MODELS_DIR": str(folder / "models"),
        "HERD_BATCH_CONCURRENCY": str(args.concurrency or args.parallel),
        "HERD_GATEWAY_REFRESH_S": "0.2",
    }  # fmt: skip
    worker_port, gateway_port = free_port(), free_port()
    argv = [sys.executable, "-m", "app.cli", "worker", "--model", model.name]
    argv += ["--port", str(worker_port), "--alias", ALIAS, "--deployment-id", str(deployment.id)]
    argv += ["--n-ctx", str(args.n_ctx), "--threads", str(args.threads)]
    argv += ["--parallel", str(args.parallel)]
    stack.enter_context(running(argv, folder / "worker.log", env))
    worker = f"http://127.0.0.1:{worker_port}"
    wait_http(worker)
    gateway_argv = [sys.executable, "-m", "app.cli", "gateway", "--port", str(gateway_port)]
    stack.enter_context(running(gateway_argv, folder / "gateway.log", env))
    gateway = f"http://127.0.0.1:{gateway_port}"
    wait_http(gateway)
    deadline = time.monotonic() + 60
    while httpx.get(f"{gateway}/health", timeout=2).json().get("live_workers", 0) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway sees no live worker")
        time.sleep(0.3)
    yield worker, gateway


async def direct(worker: str, work: list[dict[str, Any]], parallel: int) -> float:
    """Completion tokens per second with `parallel` clients keeping the slots busy."""
    queue = list(work)
    tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        while queue:
            body = queue.pop()
            answer = await http.post(f"{worker}/v1/completions", json=body, timeout=600)
            answer.raise_for_status()
            tokens += int(answer.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    async with httpx.AsyncClient() as http:
        await asyncio.gather(*(client(http) for _ in range(parallel)))
    return tokens / (time.perf_counter() - started)


def batch(gateway: str, work: list[dict[str, Any]]) -> tuple[float, float]:
    """(end-to-end tokens/s, sending tokens/s) of the work run as one batch."""
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="none")
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        for i, body in enumerate(work):
            handle.write(json.dumps({"custom_id": f"r{i}", "method": "POST",
                                     "url": "/v1/completions", "body": body}) + "\n")  # fmt: skip
    started = time.perf_counter()
    with Path(handle.name).open("rb") as source:
        uploaded = client.files.create(file=source, purpose="batch")
    run = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
    )
    while run.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.1)
        run = client.batches.retrieve(run.id)
    wall = time.perf_counter() - started
    os.unlink(handle.name)
    assert run.status == "completed" and run.output_file_id, run
    rows = [json.loads(x) for x in client.files.content(run.output_file_id).text.splitlines()]
    assert len(rows) == len(work), (len(rows), run.request_counts)
    tokens = sum(int(r["response"]["body"]["usage"]["completion_tokens"]) for r in rows)
    assert run.in_progress_at is not None and run.completed_at is not None
    # The API's times are whole seconds: the sending span is rounded to +-1 s.
    sending = max(1, run.completed_at - run.in_progress_at)
    return tokens / wall, tokens / sending


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=0,
                   help="batch lines in flight (default: --parallel)")  # fmt: skip
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    results: dict[str, list[float]] = {"direct": [], "end to end": [], "sending": []}
    with ExitStack() as stack:
        worker, gateway = stack.enter_context(herd(args, stack))
        asyncio.run(direct(worker, bodies(args.parallel, 4, 0), args.parallel))  # warm up
        for round_ in range(args.repeat):
            # Interleaved, so a change in the machine's load hits both sides alike.
            work = bodies(args.requests, args.max_tokens, 2 * round_ + 1)
            results["direct"].append(asyncio.run(direct(worker, work, args.parallel)))
            e2e, sending = batch(gateway, bodies(args.requests, args.max_tokens, 2 * round_ + 2))
            results["end to end"].append(e2e)
            results["sending"].append(sending)
            print(f"round {round_ + 1}: direct {results['direct'][-1]:.1f} tok/s, batch end to "
                  f"end {e2e:.1f}, sending {sending:.1f}", flush=True)  # fmt: skip
    base = statistics.median(results["direct"])
    load = os.getloadavg()[0]
    print(f"\n{args.requests} requests x {args.max_tokens} tokens, {args.parallel} slots, "
          f"{args.threads} threads, median of {args.repeat}; load {load:.2f}")  # fmt: skip
    print("| path | tokens/s | x direct |\n|---|---:|---:|")
    for name, values in results.items():
        value = statistics.median(values)
        print(f"| {name} | {value:.1f} | {value / base:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
