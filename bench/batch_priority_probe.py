"""In-process probe of the batched engine under a mixed load: live chats alone, then with a
batch load (8 batch calls in flight), no HTTP. Prints capacity (16 calls of 64 tokens, 4 in
flight), then per run: live and batch tokens in the window, live TTFT p50/p95, preemptions,
and scheduler steps (count, mean and max duration). Example:

    flock /tmp/herd-bench.lock env PYTHONPATH=. python bench/batch_priority_probe.py 15

Optional, to compare scheduling choices in one process: --rounds N (capacity, alone, with
batch, N times), --chunk K (batch prompt tokens per step under live load; by default the
engine measures it: step_costs.py), --idle-chunk K (the same with no live work), --headroom S
(slots left free for live arrivals, LIVE_HEADROOM_SLOTS), --quiet S (for how long after live
work they stay free, LIVE_QUIET_S), --rate-from live|batch (half the
capacity in live calls/s measured with the live calls, or half the 64-token calls' tokens/s).
Ends with the live TTFT p95 over all rounds' calls pooled, and the share of the spare
capacity (half the 64-token calls' capacity) the batch used.

Used to tell the engine's own behaviour from the HTTP stack's and the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

from app.engine import admission, step_costs
from app.engine.events import TextDelta
from app.engine.factory import load_batched_engine
from app.engine.loader import LoadOptions
from app.engine.requests import ChatMessage, GenerationRequest, Priority, SamplingParams
from app.store.demo import find_demo_model

SLOTS = 4
LIVE_TOKENS = 32
BATCH_TOKENS = 64


def p95_ms(seconds: list[float]) -> float:
    """The 95th percentile of seconds, in ms (nearest rank below)."""
    xs = sorted(seconds)
    return xs[int(0.95 * (len(xs) - 1))] * 1000


def request(text: str, priority: Priority, max_tokens: int) -> GenerationRequest:
    sampling = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return GenerationRequest(
        messages=(ChatMessage("user", text),), sampling=sampling, priority=priority
    )


async def main(duration_s: float, rounds: int, rate_from: str) -> None:
    path = find_demo_model().path
    engine = load_batched_engine(
        LoadOptions(path, n_ctx=1024, parallel=SLOTS, threads=2), max_queue=64
    )
    steps: dict[str, float] = {"n": 0, "s": 0.0, "max": 0.0}
    step_once = engine._step_once

    def timed(running: Any) -> Any:
        started = time.perf_counter()
        out = step_once(running)
        took = time.perf_counter() - started
        steps.update(n=steps["n"] + 1, s=steps["s"] + took, max=max(steps["max"], took))
        return out

    engine._step_once = timed  # type: ignore[method-assign]

    async def call(text: str, priority: Priority, n: int, times: list[float], t0: float) -> None:
        """One call; the bench-clock time of each token goes into times."""
        job = await engine.submit(request(text, priority, n))
        try:
            async for event in job.events():
                if isinstance(event, TextDelta) and event.text:
                    times.append(time.perf_counter() - t0)
        finally:
            job.cancel()  # a window's end: no batch work spills into the next window

    async def capacity(text: str, n_tokens: int) -> tuple[float, float]:
        """16 calls, SLOTS in flight: (tokens/s, calls/s)."""
        t0, queue = time.perf_counter(), list(range(16))
        times: list[float] = []

        async def runner() -> None:
            while queue:
                queue.pop()
                await call(text, "interactive", n_tokens, times, t0)

        await asyncio.gather(*(runner() for _ in range(SLOTS)))
        wall = time.perf_counter() - t0
        return len(times) / wall, 16 / wall

    pooled: dict[bool, list[float]] = {False: [], True: []}
    spare: list[float] = []

    async def mixed(with_batch: bool, rate: float, batch_cap: float) -> None:
        steps.update(n=0, s=0.0, max=0.0)
        before = engine.preemptions
        t0 = time.perf_counter()
        batch_times: list[float] = []
        live_times: list[float] = []
        ttfts: list[float] = []

        async def batch_runner(k: int) -> None:
            while time.perf_counter() - t0 < duration_s:
                await call(f"Write about topic {k}.", "batch", BATCH_TOKENS, batch_times, t0)

        async def live_call(at: float) -> None:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            sent = time.perf_counter()
            job = await engine.submit(request("Tell me a story.", "interactive", LIVE_TOKENS))
            first = True
            async for event in job.events():
                if isinstance(event, TextDelta) and event.text:
                    if first:
                        ttfts.append(time.perf_counter() - sent)
                        first = False
                    live_times.append(time.perf_counter() - t0)

        runners = [asyncio.create_task(batch_runner(k)) for k in range(8)] if with_batch else []
        rng, at, lives = random.Random(7), 0.0, []
        while (at := at + rng.expovariate(rate)) < duration_s:
            lives.append(live_call(at))
        await asyncio.gather(*lives)
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        pooled[with_batch].extend(ttfts)
        ttfts.sort()
        live = len([t for t in live_times if t < duration_s])
        batch = len([t for t in batch_times if t < duration_s])
        p50 = ttfts[len(ttfts) // 2] * 1000
        p95 = p95_ms(ttfts)
        mean = steps["s"] / max(1, steps["n"]) * 1000
        if with_batch:
            # Live traffic at half the worker's capacity leaves half of it to the batch.
            spare.append(batch / (0.5 * batch_cap * duration_s))
        print(
            f"with_batch={with_batch} live_tokens={live} batch_tokens={batch} "
            f"ttft_p50_ms={p50:.0f} ttft_p95_ms={p95:.0f} "
            f"preemptions={engine.preemptions - before} steps={steps['n']:.0f} "
            f"step_mean_ms={mean:.1f} step_max_ms={steps['max'] * 1000:.1f}",
            flush=True,
        )

    try:
        for _ in range(rounds):
            cap, _ = await capacity("Write about the sea.", BATCH_TOKENS)
            live_cap_tps, live_cap = await capacity("Tell me a story.", LIVE_TOKENS)
            # Half the capacity for the live calls themselves (their prompts included), or,
            # as before, half the 64-token calls' tokens/s in 32-token calls.
            rate = 0.5 * (live_cap if rate_from == "live" else cap / LIVE_TOKENS)
            print(
                f"capacity_tps={cap:.1f} live_capacity_calls_s={live_cap:.2f} "
                f"({live_cap_tps:.1f} tok/s) live_rate={rate:.2f}/s",
                flush=True,
            )
            await mixed(False, rate, cap)
            await mixed(True, rate, cap)
        cap, _ = await capacity("Write about the sea.", BATCH_TOKENS)
        print(f"capacity_tps_after={cap:.1f}", flush=True)
        alone, loaded = p95_ms(pooled[False]), p95_ms(pooled[True])
        print(
            f"pooled: live TTFT p95 alone {alone:.0f} ms ({len(pooled[False])} calls), with "
            f"batch {loaded:.0f} ms ({len(pooled[True])}): {loaded / alone:.2f}x; "
            f"batch used {sum(spare) / len(spare):.0%} of the spare capacity (mean of rounds)",
            flush=True,
        )
    finally:
        engine.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("duration", type=float, nargs="?", default=15.0, help="seconds per window")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--chunk", type=int, default=None)
    p.add_argument("--headroom", type=int, default=admission.LIVE_HEADROOM_SLOTS)
    p.add_argument("--idle-chunk", type=int, default=None)
    p.add_argument("--quiet", type=float, default=admission.LIVE_QUIET_S)
    p.add_argument("--rate-from", choices=["live", "batch"], default="live")
    args = p.parse_args()
    # Module constants, read by the engine at each step: set before it is loaded.
    if args.chunk is not None or args.idle_chunk is not None:
        measured = step_costs.StepCosts.batch_tokens
        live, idle = args.chunk, args.idle_chunk

        def pinned(self: step_costs.StepCosts, live_load: bool) -> int:
            chosen = live if live_load else idle
            return measured(self, live_load) if chosen is None else chosen

        step_costs.StepCosts.batch_tokens = pinned  # type: ignore[method-assign]
    admission.LIVE_HEADROOM_SLOTS = args.headroom
    admission.LIVE_QUIET_S = args.quiet
    asyncio.run(main(args.duration, args.rounds, args.rate_from))
