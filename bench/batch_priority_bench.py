"""Batch priority benchmark: batch work on the same slots as live chat, Herd vs llama-server.

Same GGUF, slots and threads for both servers, one at a time on this machine, measured over
HTTP with streaming chat completions (temperature 0, ignore_eos). Not part of CI. Example:

    flock /tmp/herd-bench.lock env PYTHONPATH=. python bench/batch_priority_bench.py \\
        --llama-server /work/anchors/bin/llama-server --threads 2 --parallel 4

For each server:
- capacity: --batch-requests interactive calls, `parallel` in flight at a time (every slot
  busy): aggregate tokens/s, the engine's best at this slot count (median of --repeat runs).
- batch alone: the same calls sent with `X-Herd-Priority: batch` (as a batch runner keeps
  its slots full); aggregate tokens/s over capacity.
- mixed load: interactive chats arriving at random (Poisson, seeded) at half of the server's
  capacity for them (calls/s of the same live calls, `parallel` in flight, measured just
  before each round; --rate-from batch keeps the former definition), for --duration
  seconds; alone, and with a batch load that keeps 2 x parallel batch calls in flight.
  Reported: interactive TTFT p50 / p95 in both runs and their ratio (median of rounds, and
  over all rounds' calls pooled), and the share of the spare capacity (half the batch
  calls' capacity x duration) that the batch turned into tokens during the window. Alone
  and loaded runs alternate for --rounds rounds (each with its own seeded schedule).
llama-server has no priority classes: it ignores the header and serves its queue in order.
The Herd worker is a real registered `herd worker` (engine_bench.herd_stand), called directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from engine_bench import QUESTIONS, anchor_server, herd_stand, pct
from ratios import Ratio, headline, verdict

BATCH_PROMPTS = [
    "Summarize the plot of a long novel about sailors.",
    "Write product notes for a garden hose.",
    "Explain photosynthesis to a child.",
    "List facts about the moon.",
    "Describe how bread is baked.",
    "Write a letter to a neighbour about a lost cat.",
]
BATCH_HEADERS = {"X-Herd-Priority": "batch"}
# A new connection per call, for both servers: llama-server closes idle keep-alive
# connections, and a call sent on one as it closed failed with "Server disconnected without
# sending a response" (it ended two runs).
FRESH_CONNECTIONS = httpx.Limits(max_connections=None, max_keepalive_connections=0)


@dataclass
class Call:
    """One streamed call: when it was sent and when each token arrived (bench clock, s)."""

    sent_s: float
    token_s: list[float] = field(default_factory=list)

    @property
    def ttft_s(self) -> float:
        return self.token_s[0] - self.sent_s if self.token_s else float("nan")


async def stream_call(
    client: httpx.AsyncClient,
    url: str,
    content: str,
    max_tokens: int,
    t0: float,
    headers: dict[str, str] | None = None,
    sink: list[Call] | None = None,
) -> Call:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    call = Call(sent_s=time.perf_counter() - t0)
    if sink is not None:
        sink.append(call)  # tokens of a call cut off at the window's end still count
    async with client.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                call.token_s.append(time.perf_counter() - t0)
    return call


async def aggregate_tps(
    url: str,
    n_calls: int,
    in_flight: int,
    max_tokens: int,
    headers: dict[str, str] | None,
    prompts: list[str] = BATCH_PROMPTS,
) -> float:
    """n_calls streams, in_flight at a time; generated tokens per wall-clock second. The same
    prompts with or without the batch header: only the priority class differs."""
    queue = list(range(n_calls))
    calls: list[Call] = []
    async with httpx.AsyncClient(timeout=600, limits=FRESH_CONNECTIONS) as client:
        t0 = time.perf_counter()

        async def runner() -> None:
            while queue:
                i = queue.pop()
                await stream_call(
                    client, url, prompts[i % len(prompts)], max_tokens, t0, headers, calls
                )

        await asyncio.gather(*(runner() for _ in range(in_flight)))
        wall = time.perf_counter() - t0
    return sum(len(c.token_s) for c in calls) / wall


def arrivals(rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    """Poisson arrival times in [0, duration_s)."""
    rng = random.Random(seed)
    times, t = [], 0.0
    while True:
        t += rng.expovariate(rate_per_s)
        if t >= duration_s:
            return times
        times.append(t)


async def mixed(
    url: str, args: argparse.Namespace, schedule: list[float], with_batch: bool
) -> dict[str, float]:
    """Interactive calls at the scheduled times, with or without a batch load alongside."""
    duration = args.duration
    live: list[Call] = []
    batch: list[Call] = []
    async with httpx.AsyncClient(timeout=600, limits=FRESH_CONNECTIONS) as client:
        t0 = time.perf_counter()

        async def one_live(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            question = QUESTIONS[i % len(QUESTIONS)]
            await stream_call(client, url, question, args.live_tokens, t0, None, live)

        async def batch_runner(k: int) -> None:
            i = k
            while time.perf_counter() - t0 < duration:
                prompt = BATCH_PROMPTS[i % len(BATCH_PROMPTS)]
                await stream_call(client, url, prompt, args.batch_tokens, t0, BATCH_HEADERS, batch)
                i += 2 * args.parallel

        runners = (
            [asyncio.create_task(batch_runner(k)) for k in range(2 * args.parallel)]
            if with_batch
            else []
        )
        await asyncio.gather(*(one_live(i, at) for i, at in enumerate(schedule)))
        for task in runners:  # the window is over: leaving the streams cancels them
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
    ttfts = [c.ttft_s * 1000 for c in live]
    return {
        "live_calls": len(live),
        "ttft_p50_ms": pct(ttfts, 0.5),
        "ttft_p95_ms": pct(ttfts, 0.95),
        "ttfts_ms": ttfts,
        "live_tokens": sum(len([t for t in c.token_s if t < duration]) for c in live),
        "batch_tokens": sum(len([t for t in c.token_s if t < duration]) for c in batch),
    }


async def capacity_tps(url: str, args: argparse.Namespace, headers: dict[str, str] | None) -> float:
    """Median over --repeat runs of --batch-requests calls, `parallel` in flight."""
    p = args.parallel
    runs = [
        await aggregate_tps(url, args.batch_requests, p, args.batch_tokens, headers)
        for _ in range(args.repeat)
    ]
    return statistics.median(runs)


async def measure(url: str, args: argparse.Namespace) -> dict[str, float]:
    await aggregate_tps(url, args.parallel, args.parallel, 4, None)  # warm-up
    capacity = await capacity_tps(url, args, None)
    batch_alone = await capacity_tps(url, args, BATCH_HEADERS)
    # Alone and loaded runs alternate, so a change in the machine's load between rounds hits
    # both sides of each ratio alike; medians over the rounds are reported. Each round sets
    # its live rate to half of this server's capacity measured just before it (the machine's
    # speed drifts by several times within minutes here), and counts spare against it.
    # With --rate-from live, "half the capacity" is half the calls/s the server sustains of
    # the live calls themselves (their prompts and short answers included), and the spare is
    # the other half of the batch calls' capacity; with "batch" (the former definition) it is
    # half the batch calls' tokens/s, sent as live calls, and the spare is what live tokens
    # leave of that capacity.
    rounds = []
    pooled: dict[str, list[float]] = {"alone": [], "with_batch": []}
    for k in range(args.rounds):
        quick = await aggregate_tps(url, 2 * args.parallel, args.parallel, args.batch_tokens, None)
        live_calls_s = (
            await aggregate_tps(
                url, 2 * args.parallel, args.parallel, args.live_tokens, None, QUESTIONS
            )
            / args.live_tokens
        )
        rate = 0.5 * (live_calls_s if args.rate_from == "live" else quick / args.live_tokens)
        schedule = arrivals(rate, args.duration, args.seed + k)
        quiet = await mixed(url, args, schedule, with_batch=False)
        loaded = await mixed(url, args, schedule, with_batch=True)
        pooled["alone"] += quiet.pop("ttfts_ms")
        pooled["with_batch"] += loaded.pop("ttfts_ms")
        loaded["capacity_tps"] = quick
        loaded["live_capacity_calls_s"] = live_calls_s
        loaded["live_rate_per_s"] = rate
        rounds.append((quiet, loaded))
        print(json.dumps({"round": k, "alone": quiet, "with_batch": loaded}), flush=True)
    capacity_after = await capacity_tps(url, args, None)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    def spare(loaded: dict[str, float]) -> float:
        capacity_tokens = loaded["capacity_tps"] * args.duration
        if args.rate_from == "live":
            return loaded["batch_tokens"] / (0.5 * capacity_tokens)
        return loaded["batch_tokens"] / (capacity_tokens - loaded["live_tokens"])

    spare_used = [spare(loaded) for _quiet, loaded in rounds]
    p95_alone = pct(pooled["alone"], 0.95)
    p95_loaded = pct(pooled["with_batch"], 0.95)
    return {
        "capacity_tps": capacity,
        "capacity_tps_after": capacity_after,
        "batch_alone_tps": batch_alone,
        "batch_alone_ratio": batch_alone / capacity,
        "live_capacity_calls_s": median([lo["live_capacity_calls_s"] for _q, lo in rounds]),
        "live_rate_per_s": median([lo["live_rate_per_s"] for _q, lo in rounds]),
        "live_calls_per_round": median([q["live_calls"] for q, _l in rounds]),
        "ttft_p50_ms_alone": median([q["ttft_p50_ms"] for q, _l in rounds]),
        "ttft_p95_ms_alone": median([q["ttft_p95_ms"] for q, _l in rounds]),
        "ttft_p50_ms_with_batch": median([lo["ttft_p50_ms"] for _q, lo in rounds]),
        "ttft_p95_ms_with_batch": median([lo["ttft_p95_ms"] for _q, lo in rounds]),
        "ttft_p95_ratio": median([lo["ttft_p95_ms"] / q["ttft_p95_ms"] for q, lo in rounds]),
        "live_tokens_with_batch": median([lo["live_tokens"] for _q, lo in rounds]),
        "batch_tokens_in_window": median([lo["batch_tokens"] for _q, lo in rounds]),
        "spare_used": median(spare_used),
        "pooled_live_calls_alone": len(pooled["alone"]),
        "pooled_ttft_p95_ms_alone": p95_alone,
        "pooled_ttft_p95_ms_with_batch": p95_loaded,
        "pooled_ttft_p95_ratio": p95_loaded / p95_alone,
    }


def preemptions(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r"^herd_worker_preemptions_total (\d+)", text, re.M)
    return int(found.group(1)) if found else 0


def target_lines(herd: dict[str, float], args: argparse.Namespace) -> list[str]:
    """Herd's targets, each with the figures measure() has (bench/ratios.py: "met" only when
    every figure meets it). The TTFT ratio has both: the ratio of the rounds' median p95s and
    the median of the per-round ratios; the other two have one figure each."""
    p95 = Ratio(
        of_medians=herd["ttft_p95_ms_with_batch"] / herd["ttft_p95_ms_alone"],
        median_of_rounds=herd["ttft_p95_ratio"],
        rounds=args.rounds,
    )
    p95_line = headline("live TTFT p95 with batch / alone", p95, 1.25, higher_is_better=False)
    pooled = herd["pooled_ttft_p95_ratio"]
    # Capacity and batch-alone runs are not paired; spare use has one figure per round.
    alone = herd["batch_alone_ratio"]
    alone_verdict = verdict(Ratio(alone, alone, rounds=args.repeat), 0.9)
    spare = herd["spare_used"]
    spare_verdict = verdict(Ratio(spare, spare, rounds=args.rounds), 0.7)
    return [
        f"{p95_line} (over all rounds' calls pooled: {pooled:.2f}x)",
        f"batch alone / capacity: {alone:.2f}x, medians of {args.repeat} runs each (runs not "
        f"paired: no per-run ratio); target >= 0.9x: {alone_verdict}",
        f"spare capacity used by the batch: {spare:.0%}, median of {args.rounds} rounds (one "
        f"figure per round); target >= 70%: {spare_verdict}",
    ]


def main() -> int:
    from app.store.demo import find_demo_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="GGUF file (default: the demo model)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for both servers")
    p.add_argument("--parallel", type=int, default=4, help="slots of both servers")
    p.add_argument("--n-ctx", type=int, default=1024, help="context tokens per slot")
    p.add_argument("--live-tokens", type=int, default=32, help="tokens per interactive chat")
    p.add_argument("--batch-tokens", type=int, default=64, help="tokens per batch call")
    p.add_argument("--batch-requests", type=int, default=24, help="calls of the batch-alone run")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of each mixed run")
    p.add_argument("--rounds", type=int, default=3, help="alone/with-batch pairs of runs")
    p.add_argument("--repeat", type=int, default=3, help="runs of capacity and batch alone")
    p.add_argument("--seed", type=int, default=7, help="of the interactive arrival schedule")
    p.add_argument(
        "--rate-from",
        choices=["live", "batch"],
        default="live",
        help="half capacity in live calls/s measured with the live calls (live), or half the "
        "batch calls' tokens/s sent as live calls (batch, the former definition)",
    )
    p.add_argument("--llama-server", default=None, help="llama-server binary (the anchor)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    args.model = args.model or str(find_demo_model().path)
    results: dict[str, dict[str, float]] = {}
    with herd_stand(args, args.parallel) as urls:
        url = urls["herd"]
        before = preemptions(url)
        results["herd"] = asyncio.run(measure(url, args))
        results["herd"]["preemptions"] = preemptions(url) - before
        print(json.dumps({"herd": results["herd"]}), flush=True)
    if args.llama_server:
        with anchor_server("llama-server", args, args.parallel) as url:
            results["llama-server"] = asyncio.run(measure(url, args))
            print(json.dumps({"llama-server": results["llama-server"]}), flush=True)
    print(
        f"model {args.model}, threads {args.threads}, parallel {args.parallel}, n_ctx/slot "
        f"{args.n_ctx}, live {args.live_tokens} tok at {results['herd']['live_rate_per_s']:.2f}/s "
        f"for {args.duration:.0f} s, batch {args.batch_tokens} tok x {2 * args.parallel} in flight"
    )
    for metric in results["herd"]:
        row = [f"{metric:24s}"] + [
            f"{k}={v.get(metric, float('nan')):10.3f}" for k, v in results.items()
        ]
        print("  ".join(row))
    print("\n".join(target_lines(results["herd"], args)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
