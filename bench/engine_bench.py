"""Engine benchmark: Herd's batched worker vs llama-cpp-python's server vs llama-server.

Same GGUF, same threads, one server at a time on this machine, all measured over HTTP with
streaming chat completions. Not part of CI. Example:

    python bench/engine_bench.py --llama-server /path/to/llama-server --threads 2

Herd's worker runs as its HTTP app (create_app) around make_engine(), without database
registration, which is not on the request path. Prints a table and ratios to llama-server
(or to llama-cpp-python's server when llama-server is not given).
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
from dataclasses import dataclass, field
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


def herd_serve(model: str, port: int, parallel: int, n_ctx: int, threads: int) -> None:
    """Run Herd's worker HTTP app around make_engine (the --serve-herd child)."""
    import uvicorn

    from app.config import Settings
    from app.engine.factory import make_engine
    from app.engine.loader import LoadOptions
    from app.worker.app import create_app
    from app.worker.state import WorkerState

    engine = make_engine(
        LoadOptions(Path(model), n_ctx=n_ctx, n_threads=threads, slots=parallel), max_queue=64
    )
    state = WorkerState(alias="bench", model_path=model)
    state.set_ready(engine)
    try:
        uvicorn.run(create_app(Settings(), state), host="127.0.0.1", port=port, log_level="warning")
    finally:
        engine.close()


def start(kind: str, args: argparse.Namespace, port: int, parallel: int) -> subprocess.Popen[bytes]:
    model, t = args.model, str(args.threads)
    if kind == "herd":
        cmd = [sys.executable, __file__, "--serve-herd", "--port", str(port)]
        cmd += ["--parallel", str(parallel), "--model", model, "--threads", t]
        cmd += ["--n-ctx", str(args.n_ctx)]
    elif kind == "llama-cpp-python":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--port", str(port)]
        cmd += ["--n_threads", t, "--n_threads_batch", t, "--n_ctx", str(args.n_ctx)]
        # Its default cuts a running stream off when the next request arrives.
        cmd += ["--interrupt_requests", "False"]
    else:
        cmd = [args.llama_server, "-m", model, "--port", str(port), "-t", t, "-tb", t]
        cmd += ["--parallel", str(parallel), "-c", str(args.n_ctx * parallel), "--no-webui"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def measure(url: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    await scenario_concurrent(url, 1, 4)  # warm-up
    out["1 stream"] = await scenario_concurrent(url, 1, args.max_tokens)
    for n in args.concurrency:
        out[f"{n} streams"] = await scenario_concurrent(url, n, args.max_tokens)
    out["8 chats, 1k system prompt, cold"] = await scenario_shared_prefix(url, shared=False)
    out["8 chats, 1k system prompt, shared"] = await scenario_shared_prefix(url, shared=True)
    return out


def main() -> int:
    from app.store.demo import find_demo_model

    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, nargs="*", default=[4, 8])
    p.add_argument("--llama-server", default=None)
    p.add_argument("--servers", nargs="*", default=["llama-server", "herd", "llama-cpp-python"])
    p.add_argument("--serve-herd", action="store_true")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.model = args.model or str(find_demo_model().path)
    if args.serve_herd:
        herd_serve(args.model, args.port, args.parallel, args.n_ctx, args.threads)
        return 0
    servers = [s for s in args.servers if s != "llama-server" or args.llama_server]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind in servers:
        port = free_port()
        proc = start(kind, args, port, args.parallel)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc)
            results[kind] = asyncio.run(measure(url, args))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    anchor = "llama-server" if "llama-server" in results else "llama-cpp-python"
    print(f"model {args.model}, threads {args.threads}, parallel {args.parallel}, "
          f"n_ctx/slot {args.n_ctx}, max_tokens {args.max_tokens}; anchor {anchor}")  # fmt: skip
    for scen in results[anchor]:
        for metric in results[anchor][scen]:
            base = results[anchor][scen][metric]
            row = [f"{scen:36s} {metric:22s}"]
            for kind in results:
                v = results[kind][scen][metric]
                row.append(f"{kind}={v:9.1f} ({v / base:5.2f}x)")
            print("  ".join(row))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
