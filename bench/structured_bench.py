"""Structured output benchmark: JSON-schema-constrained decoding vs unconstrained, Herd vs
llama-server, and n=4 choices vs four sequential calls.

One `herd worker` (registered, as in production; see engine_bench.herd_stand) and, when
given, llama-server on the same GGUF, threads and slots, one at a time. Measured over HTTP,
non-streamed, greedy:

- constrained: tokens/s (all streams together) at 1 and 8 concurrent requests whose
  response_format is a json_schema that needs many tokens (an array of at least 40 objects),
  cut at --max-tokens; the same for the same prompt without a schema ("free", ignore_eos);
- n4: completion tokens/s of one request with n=4 vs four sequential n=1 requests.

Example: python bench/structured_bench.py --llama-server /work/anchors/bin/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
from engine_bench import ALIAS, anchor_server, herd_stand

SCHEMA = {
    "type": "array",
    "minItems": 40,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["admin", "editor", "viewer"]},
        },
        "required": ["name", "age", "role"],
        "additionalProperties": False,
    },
}
MESSAGES = [{"role": "user", "content": "List the members of a large club as JSON."}]


def body(constrained: bool, max_tokens: int, **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": ALIAS,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
    if constrained:
        schema = {"name": "members", "schema": SCHEMA, "strict": True}
        request["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        request["ignore_eos"] = True
    return request


async def call(client: httpx.AsyncClient, url: str, request: dict[str, Any]) -> int:
    response = await client.post(f"{url}/v1/chat/completions", json=request)
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


async def tokens_per_second(url: str, requests: list[dict[str, Any]], sequential: bool) -> float:
    async with httpx.AsyncClient(timeout=600) as client:
        await call(client, url, requests[0])  # warm: grammar cache, pages
        started = time.perf_counter()
        if sequential:
            tokens = 0
            for request in requests:
                tokens += await call(client, url, request)
        else:
            tokens = sum(await asyncio.gather(*(call(client, url, r) for r in requests)))
        return tokens / (time.perf_counter() - started)


def measure(url: str, args: argparse.Namespace, herd: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    for streams in (1, 8):
        for constrained in (True, False):
            name = f"{'json_schema' if constrained else 'free'} x{streams} tok/s"
            requests = [body(constrained, args.max_tokens) for _ in range(streams)]
            out[name] = asyncio.run(tokens_per_second(url, requests, sequential=False))
            print(f"  {name}: {out[name]:.1f}", flush=True)
    if herd:
        n4 = [body(False, args.max_tokens, n=4, seed=1, temperature=0.8)]
        out["n=4 one call tok/s"] = asyncio.run(tokens_per_second(url, n4, sequential=False))
        four = [body(False, args.max_tokens, seed=i, temperature=0.8) for i in range(4)]
        out["n=1 four sequential tok/s"] = asyncio.run(
            tokens_per_second(url, four, sequential=True)
        )
    return out


def main() -> int:
    from app.store.demo import find_demo_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="GGUF file (default: the demo model)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--parallel", type=int, default=8, help="slots of every server")
    p.add_argument("--n-ctx", type=int, default=1024, help="context tokens per slot")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--llama-server", default=None, help="llama-server binary (the anchor)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    args.model = args.model or str(find_demo_model().path)
    results: dict[str, dict[str, float]] = {}
    with herd_stand(args, args.parallel) as urls:
        results["herd"] = measure(urls["herd"], args, herd=True)
        print(json.dumps(results["herd"]), flush=True)
    if args.llama_server:
        with anchor_server("llama-server", args, args.parallel) as url:
            results["llama-server"] = measure(url, args, herd=False)
            print(json.dumps(results["llama-server"]), flush=True)
    herd = results["herd"]
    print(f"model {args.model}, threads {args.threads}, parallel {args.parallel}, "
          f"max_tokens {args.max_tokens}")  # fmt: skip
    for metric, value in herd.items():
        row = f"{metric:28s} herd={value:8.1f}"
        anchor = results.get("llama-server", {}).get(metric)
        if anchor:
            row += f"  llama-server={anchor:8.1f}  herd/llama-server={value / anchor:5.2f}x"
        print(row)
    for streams in (1, 8):
        ratio = herd[f"json_schema x{streams} tok/s"] / herd[f"free x{streams} tok/s"]
        print(f"herd json_schema / herd free at {streams} streams: {ratio:5.2f}x")
    ratio = herd["n=4 one call tok/s"] / herd["n=1 four sequential tok/s"]
    print(f"herd n=4 / four sequential n=1: {ratio:5.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
