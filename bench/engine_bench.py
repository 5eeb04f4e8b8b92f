"""Engine benchmark: Herd's batched worker vs llama-cpp-python's server vs llama-server.

Same GGUF, same threads, one server at a time on this machine, all measured over HTTP with
streaming chat completions. Not part of CI. Example:

    python bench/engine_bench.py --llama-server /path/to/llama-server --threads 2

Herd runs as it does in production: a real `herd worker` registered in a fresh database on
the embedded PostgreSQL under bench/.work (alias -> deployment -> the worker's own row,
heartbeated), and a real `herd gateway` in front of it with its response cache off. The
same worker is measured twice: called directly ("herd") and through the gateway
("herd-gateway"). Prints a table and ratios to llama-server (or to llama-cpp-python's
server when llama-server is not given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Tell me a story about a dragon.",
    "Explain how rain forms.",
    "Describe a busy market.",
    "Write about the ocean at night.",
    "Tell me about the history of bread.",
    "Describe a walk in the mountains.",
    "Explain how a bicycle works.",
    "Tell me a story about a robot.",
]
SERVERS = ("llama-server", "herd", "herd-gateway", "llama-cpp-python")
SYSTEM_RULE = "Rule {i}: answer politely, keep to the facts, and cite item {i} when relevant."


def system_prompt(nonce: str = "") -> str:
    """About 1,000 tokens of system prompt; a nonce in front makes it unshareable."""
    rules = " ".join(SYSTEM_RULE.format(i=i) for i in range(56))
    return f"{nonce}You are a careful assistant. {rules}"


@dataclass
class StreamResult:
    ttft_s: float
    token_times: list[float] = field(default_factory=list)
    tokens: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one_stream(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], max_tokens: int
) -> StreamResult:
    body = {
        "model": "bench",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    started = time.perf_counter()
    result = StreamResult(ttft_s=float("nan"))
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if not choices or not (choices[0].get("delta") or {}).get("content"):
                continue
            now = time.perf_counter() - started
            if not result.token_times:
                result.ttft_s = now
            result.token_times.append(now)
            result.tokens += 1
    return result


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


async def scenario_concurrent(url: str, n: int, max_tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                one_stream(client, url, [{"role": "user", "content": QUESTIONS[i % 8]}], max_tokens)
                for i in range(n)
            )
        )
        wall = time.perf_counter() - started
    gaps = [b - a for r in results for a, b in zip(r.token_times, r.token_times[1:], strict=False)]
    ttfts = [r.ttft_s for r in results]
    decode = [
        (r.tokens - 1) / (r.token_times[-1] - r.token_times[0]) for r in results if r.tokens > 1
    ]
    return {
        "aggregate_tps": sum(r.tokens for r in results) / wall,
        "decode_tps_per_stream": statistics.mean(decode) if decode else float("nan"),
        "ttft_p50_ms": pct(ttfts, 0.5) * 1000,
        "ttft_p95_ms": pct(ttfts, 0.95) * 1000,
        "itl_p95_ms": pct(gaps, 0.95) * 1000,
    }


async def scenario_shared_prefix(url: str, shared: bool) -> dict[str, float]:
    """8 chats at once with a ~1,000-token system prompt, shared (after one warm-up chat
    with it) or each with a unique nonce in front (nothing reusable)."""
    async with httpx.AsyncClient(timeout=600) as client:
        nonce = "" if shared else None
        if shared:
            warm = system_prompt()
            await one_stream(
                client,
                url,
                [{"role": "system", "content": warm}, {"role": "user", "content": "Hi"}],
                2,
            )

        def msgs(i: int) -> list[dict[str, str]]:
            sp = system_prompt(nonce if nonce is not None else f"[{uuid.uuid4().hex[:8]}] ")
            return [{"role": "system", "content": sp}, {"role": "user", "content": QUESTIONS[i]}]

        results = await asyncio.gather(*(one_stream(client, url, msgs(i), 4) for i in range(8)))
    ttfts = [r.ttft_s * 1000 for r in results]
    return {"ttft_p50_ms": pct(ttfts, 0.5), "ttft_p95_ms": pct(ttfts, 0.95)}


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(f"{url}/v1/models", timeout=2)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server not ready")


ALIAS = "bench"


@contextmanager
def herd_stand(args: argparse.Namespace, parallel: int) -> Iterator[dict[str, str]]:
    """A registered `herd worker` and a `herd gateway` routing ALIAS to it; yields the URLs
    to measure: "herd" (the worker itself) and "herd-gateway"."""
    from gateway_bench import WORK, fresh_database, running, start_gateway

    from app.control.deployments import Deployments, ServingSettings
    from app.db import migrate
    from app.db.embedded import EmbeddedPostgres
    from app.db.engine import make_engine as make_db_engine
    from app.store.catalog import ModelStore

    folder = WORK / f"engine-{time.strftime('%Y%m%dT%H%M%S')}"
    folder.mkdir(parents=True)
    with ExitStack() as stack:
        embedded = EmbeddedPostgres(WORK / "herd-home" / "pgdata")
        stack.callback(embedded.release)
        db_url = stack.enter_context(fresh_database(embedded.start()))
        migrate.upgrade(db_url)
        db = make_db_engine(db_url)
        stack.callback(db.dispose)
        model = ModelStore(db, folder / "models").add(Path(args.model))
        serving = ServingSettings(
            model=model.name, n_ctx=args.n_ctx, parallel=parallel, threads=args.threads
        )
        deployment = Deployments(db).create(ALIAS, serving)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "HERD_DATABASE_URL": db_url,
            "HERD_HOME": str(folder / "herd-home"),
            "HERD_MODELS_DIR": str(folder / "models"),
            # Every call must reach the worker: identical greedy requests would be replayed.
            "HERD_CACHE_ENABLED": "false",
        }
        herd = [sys.executable, "-m", "app.cli"]
        worker_port = free_port()
        worker_argv = [*herd, "worker", "--model", model.name, "--port", str(worker_port)]
        worker_argv += ["--alias", ALIAS, "--deployment-id", str(deployment.id)]
        worker_argv += ["--parallel", str(parallel), "--n-ctx", str(args.n_ctx)]
        worker_argv += ["--threads", str(args.threads), "--max-queue", "64"]
        worker = stack.enter_context(running(worker_argv, folder / "worker.log", env))
        worker_url = f"http://127.0.0.1:{worker_port}"
        wait_ready(worker_url, worker)
        gateway_url, _ = start_gateway(stack, folder, env)
        yield {"herd": worker_url, "herd-gateway": gateway_url}


@contextmanager
def anchor_server(kind: str, args: argparse.Namespace, parallel: int) -> Iterator[str]:
    """llama-server or llama-cpp-python's server on a free port; yields its URL."""
    port = free_port()
    model, t = args.model, str(args.threads)
    if kind == "llama-cpp-python":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--port", str(port)]
        cmd += ["--n_threads", t, "--n_threads_batch", t, "--n_ctx", str(args.n_ctx)]
        # Its default cuts a running stream off when the next request arrives.
        cmd += ["--interrupt_requests", "False"]
    else:
        cmd = [args.llama_server, "-m", model, "--port", str(port), "-t", t, "-tb", t]
        cmd += ["--parallel", str(parallel), "-c", str(args.n_ctx * parallel), "--no-webui"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def median_of(
    repeat: int, run: Callable[[], Awaitable[dict[str, float]]]
) -> dict[str, float]:
    """Run a scenario repeat times (back to back); the median of each metric. A run the
    server broke off (a dropped connection) is run again once, and says so."""
    runs = []
    for _ in range(repeat):
        try:
            runs.append(await run())
        except httpx.HTTPError as exc:
            print(f"  run failed ({type(exc).__name__}: {exc}); running it again", flush=True)
            runs.append(await run())
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


async def measure(url: str, args: argparse.Namespace, out: dict[str, dict[str, float]]) -> None:
    """Fill out scenario by scenario, so a failure keeps what was measured before it."""
    rep = args.repeat
    await scenario_concurrent(url, 1, 4)  # warm-up
    for n in [1, *args.concurrency]:
        name = "1 stream" if n == 1 else f"{n} streams"
        out[name] = await median_of(rep, partial(scenario_concurrent, url, n, args.max_tokens))
    if args.no_prefix:
        return
    for name, shared in (("cold", False), ("shared", True)):
        out[f"8 chats, 1k system prompt, {name}"] = await median_of(
            args.prefix_repeat, partial(scenario_shared_prefix, url, shared)
        )


def run_measure(url: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    try:
        asyncio.run(measure(url, args, out))
    except httpx.HTTPError as exc:
        print(f"{url}: stopped by {type(exc).__name__}: {exc}", flush=True)
    return out


def main() -> int:
    from app.store.demo import find_demo_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="GGUF file (default: the demo model)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for every server")
    p.add_argument("--parallel", type=int, default=16, help="slots of every batching server")
    p.add_argument("--n-ctx", type=int, default=2048, help="context tokens per slot")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per stream")
    p.add_argument("--concurrency", type=int, nargs="*", default=[4, 8, 16])
    p.add_argument("--llama-server", default=None, help="llama-server binary (the anchor)")
    p.add_argument("--servers", nargs="*", default=list(SERVERS), choices=SERVERS)
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario; medians shown")
    p.add_argument("--prefix-repeat", type=int, default=1, help="runs of the prefix scenario")
    p.add_argument("--no-prefix", action="store_true", help="skip the shared-prefix scenario")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    args.model = args.model or str(find_demo_model().path)
    servers = [s for s in args.servers if s != "llama-server" or args.llama_server]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind in servers:
        if kind == "herd-gateway" and "herd" in servers:
            continue  # measured on the same stand as "herd"
        if kind in ("herd", "herd-gateway"):
            with herd_stand(args, args.parallel) as urls:
                for name, url in urls.items():
                    if name in servers:
                        results[name] = run_measure(url, args)
                        print(json.dumps({name: results[name]}), flush=True)
        else:
            with anchor_server(kind, args, args.parallel) as url:
                results[kind] = run_measure(url, args)
                print(json.dumps({kind: results[kind]}), flush=True)
    anchor = "llama-server" if "llama-server" in results else next(iter(results))
    print(f"model {args.model}, threads {args.threads}, parallel {args.parallel}, "
          f"n_ctx/slot {args.n_ctx}, max_tokens {args.max_tokens}; anchor {anchor}")  # fmt: skip
    for scen in results[anchor]:
        for metric in results[anchor][scen]:
            base = results[anchor][scen][metric]
            row = [f"{scen:36s} {metric:22s}"]
            for kind in results:
                v = results[kind].get(scen, {}).get(metric, float("nan"))
                row.append(f"{kind}={v:9.1f} ({v / base:5.2f}x)")
            print("  ".join(row))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
