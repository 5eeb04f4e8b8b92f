"""Structured output benchmark: JSON-schema-constrained decoding vs unconstrained, Herd vs
llama-server, and n=4 choices vs four sequential calls.

One `herd worker` (registered, as in production; see engine_bench.herd_stand) and, when
given, llama-server on the same GGUF, threads and slots. Both stay up for the whole run and
are measured turn by turn (scenario by scenario, --rounds times, the servers' order swapped
every round), so a change in the shared machine's load hits both alike. Each ratio is
reported twice (bench/ratios.py): the ratio of the medians over rounds and the median of the
per-round ratios with their spread; a target is met only when both meet it. Measured over
HTTP, non-streamed, greedy:

- constrained: tokens/s (all streams together) at 1 and 8 concurrent requests whose
  response_format is a json_schema that needs many tokens (an array of at least 40 objects),
  cut at --max-tokens; the same for the same prompt without a schema ("free", ignore_eos).
  Every constrained answer must start with "[" (the schema is applied, on both servers);
- n4 (Herd only): completion tokens/s of one request with n=4 vs four sequential n=1
  requests, sampled (temperature 0.8, seeded), unconstrained with ignore_eos.

Example: python bench/structured_bench.py --llama-server /work/anchors/bin/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from engine_bench import ALIAS, anchor_server, herd_stand
from ratios import Ratio, describe, headline, paired

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
SCENARIOS = ("json_schema x1", "free x1", "json_schema x8", "free x8")
# Targets: constrained tokens/s at least this much of llama-server's, and of Herd's own
# unconstrained; n=4 in one call against four sequential calls.
VS_ANCHOR_TARGET = 0.9
VS_FREE_TARGET = 0.8
N4_TARGET = 2.5


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
    answer = response.json()
    if "response_format" in request:
        for choice in answer["choices"]:
            text = choice["message"]["content"].lstrip()
            if not text.startswith("["):
                raise RuntimeError(f"{url} ignored the schema: {text[:60]!r}")
    return int(answer["usage"]["completion_tokens"])


async def tokens_per_second(
    client: httpx.AsyncClient, url: str, requests: list[dict[str, Any]], sequential: bool
) -> float:
    started = time.perf_counter()
    if sequential:
        tokens = 0
        for request in requests:
            tokens += await call(client, url, request)
    else:
        tokens = sum(await asyncio.gather(*(call(client, url, r) for r in requests)))
    return tokens / (time.perf_counter() - started)


def scenario_requests(name: str, max_tokens: int) -> list[dict[str, Any]]:
    streams = int(name.rsplit("x", 1)[1])
    return [body(name.startswith("json"), max_tokens) for _ in range(streams)]


async def run_rounds(targets: dict[str, str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every round: each scenario on every target in turn, then Herd's n=4 pair."""
    rounds: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=900) as client:
        for url in targets.values():  # warm: grammar cache, pages, both scenario kinds
            await call(client, url, body(True, 8))
            await call(client, url, body(False, 8))
        for i in range(args.rounds):
            result: dict[str, Any] = {name: {} for name in targets}
            names = list(targets)
            order = names[i % len(names) :] + names[: i % len(names)]
            for scenario in SCENARIOS:
                for name in order:
                    url = targets[name]
                    requests = scenario_requests(scenario, args.max_tokens)
                    value = await tokens_per_second(client, url, requests, sequential=False)
                    result[name][scenario] = value
                    print(f"  round {i} {name} {scenario}: {value:.1f} tok/s", flush=True)
            herd = targets["herd"]
            n4 = [body(False, args.max_tokens, n=4, seed=1, temperature=0.8)]
            four = [body(False, args.max_tokens, seed=s, temperature=0.8) for s in range(4)]
            result["herd"]["n=4 one call"] = await tokens_per_second(client, herd, n4, False)
            result["herd"]["n=1 four sequential"] = await tokens_per_second(
                client, herd, four, True
            )
            print(f"  round {i} herd n4: {json.dumps(result['herd'])}", flush=True)
            rounds.append(result)
    return rounds


def comparisons(rounds: list[dict[str, Any]]) -> dict[str, tuple[Ratio, float | None]]:
    """Each comparison's two figures (bench/ratios.py) and its target (None: no target)."""

    def series(server: str, metric: str) -> list[float]:
        return [r.get(server, {}).get(metric, math.nan) for r in rounds]

    out: dict[str, tuple[Ratio, float | None]] = {}
    for streams in (1, 8):
        json_s, free = series("herd", f"json_schema x{streams}"), series("herd", f"free x{streams}")
        out[f"herd json_schema / herd free, {streams} streams"] = (
            paired(json_s, free),
            VS_FREE_TARGET,
        )
    n4 = paired(series("herd", "n=4 one call"), series("herd", "n=1 four sequential"))
    out["herd n=4 / four sequential n=1"] = (n4, N4_TARGET)
    if "llama-server" in rounds[0]:
        for scenario in SCENARIOS:
            target = VS_ANCHOR_TARGET if scenario.startswith("json") else None
            ratio = paired(series("herd", scenario), series("llama-server", scenario))
            out[f"herd / llama-server, {scenario}"] = (ratio, target)
        for streams in (1, 8):
            ratio = paired(
                series("llama-server", f"json_schema x{streams}"),
                series("llama-server", f"free x{streams}"),
            )
            out[f"llama-server json_schema / llama-server free, {streams} streams"] = (ratio, None)
    return out


def main() -> int:
    from app.store.demo import find_demo_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="GGUF file (default: the demo model)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--parallel", type=int, default=8, help="slots of every server")
    p.add_argument("--n-ctx", type=int, default=1024, help="context tokens per slot")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--llama-server", default=None, help="llama-server binary (the anchor)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    args.model = args.model or str(find_demo_model().path)
    with ExitStack() as stack:
        targets = {"herd": stack.enter_context(herd_stand(args, args.parallel))["herd"]}
        if args.llama_server:
            targets["llama-server"] = stack.enter_context(
                anchor_server("llama-server", args, args.parallel)
            )
        rounds = asyncio.run(run_rounds(targets, args))
    print(f"model {args.model}, threads {args.threads}, parallel {args.parallel}, "
          f"max_tokens {args.max_tokens}, rounds {args.rounds}")  # fmt: skip
    for metric in rounds[0]["herd"]:
        values = [r["herd"][metric] for r in rounds]
        row = f"{metric:22s} herd median {statistics.median(values):7.1f} tok/s"
        if metric in rounds[0].get("llama-server", {}):
            anchor = statistics.median(r["llama-server"][metric] for r in rounds)
            row += f"   llama-server median {anchor:7.1f} tok/s"
        print(row)
    summary = comparisons(rounds)
    for name, (ratio, target) in summary.items():
        print(describe(name, ratio) if target is None else headline(name, ratio, target))
    if args.json:
        figures = {name: asdict(ratio) for name, (ratio, _) in summary.items()}
        Path(args.json).write_text(json.dumps({"rounds": rounds, "ratios": figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
