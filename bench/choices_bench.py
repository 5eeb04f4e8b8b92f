"""What limits n>1 choices: decode cost per step against the number of sequences, and one n=4
request against four sequential n=1 requests, in-process (no HTTP) on the batched engine.

1. The ceiling. The same BatchedEngine context decodes one token for each of 1, 2, 4, 8
   sequences per llama_decode; the step's wall and CPU time (the calling thread's CPU time,
   exact with --threads 1: llama.cpp then computes on the caller's thread, so other load
   on the machine barely moves it). n=4 cannot beat four sequential calls by more than
   4 x step(1) / step(4), however it is scheduled.
2. What Herd reaches. ChoiceSet (app/worker/choices.py, as the worker serves n) with n=4 vs
   four sequential requests, sampled and ignore_eos, with how many sequences each generation
   decode held (all four in one decode is the goal).

Example: python bench/choices_bench.py --threads 1 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import time
from typing import Any

from app.engine import batched
from app.engine.events import Finished
from app.engine.factory import load_batched_engine
from app.engine.loader import LoadOptions
from app.engine.requests import ChatMessage, GenerationRequest, SamplingParams
from app.store.demo import find_demo_model
from app.worker.choices import ChoiceSet, choice_requests

PROMPT = "List the members of a large club as JSON."


def step_costs(
    engine: batched.BatchedEngine, steps: int, rounds: int
) -> dict[int, dict[str, float]]:
    """Median wall and caller-CPU ms of one decode step, by number of sequences."""
    context = engine._context
    prompt = list(range(100, 140))
    for seq in range(8):
        context.batch.clear()
        context.batch.add_run(prompt, 0, seq, True)
        assert context.decode() == 0
    wall: dict[int, list[float]] = collections.defaultdict(list)
    cpu: dict[int, list[float]] = collections.defaultdict(list)
    for _ in range(rounds):
        for n in (1, 2, 4, 8):
            for step in range(steps):
                context.batch.clear()
                for seq in range(n):
                    context.batch.add(7 + seq, len(prompt) + step, seq, True)
                t, c = time.perf_counter(), time.thread_time()
                assert context.decode() == 0
                wall[n].append((time.perf_counter() - t) * 1e3)
                cpu[n].append((time.thread_time() - c) * 1e3)
            for seq in range(8):
                context.forget(seq, len(prompt))
    for slot in engine._slots:  # the engine's prefix cache no longer matches these cells
        context.forget(slot.seq_id)
        slot.kv_tokens.clear()
    return {
        n: {"wall_ms": statistics.median(wall[n]), "cpu_ms": statistics.median(cpu[n])}
        for n in wall
    }


def request(seed: int, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage("user", PROMPT),),
        sampling=SamplingParams(temperature=0.8, seed=seed, max_tokens=max_tokens, ignore_eos=True),
    )


async def tokens(choices: ChoiceSet) -> int:
    n = 0
    async for _, event in choices.events():
        if isinstance(event, Finished):
            n += event.usage.completion_tokens
    return n


async def n4_vs_sequential(
    engine: batched.BatchedEngine, max_tokens: int, rounds: int, sizes: collections.Counter[int]
) -> list[dict[str, Any]]:
    await tokens(await ChoiceSet.submit(engine, [request(0, 8)]))  # warm
    out = []
    for _ in range(rounds):
        sizes.clear()
        t = time.perf_counter()
        done = await tokens(
            await ChoiceSet.submit(engine, choice_requests(request(1, max_tokens), 4))
        )
        n4 = done / (time.perf_counter() - t)
        batch_sizes = dict(sorted(sizes.items()))
        t = time.perf_counter()
        done = 0
        for seed in range(4):
            done += await tokens(await ChoiceSet.submit(engine, [request(10 + seed, max_tokens)]))
        out.append({"n4": n4, "sequential": done / (time.perf_counter() - t), "sizes": batch_sizes})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="decode steps per size and round")
    args = p.parse_args()
    options = LoadOptions(find_demo_model().path, n_ctx=1024, parallel=8, threads=args.threads)
    engine = load_batched_engine(options)
    sizes: collections.Counter[int] = collections.Counter()
    decode_step = batched.BatchedEngine._decode_step

    def counted(self: batched.BatchedEngine, generating: list[Any], chunks: Any) -> list[Any]:
        sizes[len(generating)] += 1
        return decode_step(self, generating, chunks)

    try:
        # Before the engine runs anything: the scheduler thread is idle until a submit.
        costs = step_costs(engine, args.steps, args.rounds)
        batched.BatchedEngine._decode_step = counted  # type: ignore[method-assign]
        runs = asyncio.run(n4_vs_sequential(engine, args.max_tokens, args.rounds, sizes))
    finally:
        batched.BatchedEngine._decode_step = decode_step  # type: ignore[method-assign]
        engine.close()
    print(f"demo model, threads {args.threads}, parallel 8, max_tokens {args.max_tokens}")
    one = costs[1]
    for n, cost in costs.items():
        print(
            f"{n} sequences: step wall {cost['wall_ms']:6.2f} ms, CPU {cost['cpu_ms']:6.2f} ms; "
            f"tokens/s vs 1 sequence: wall x{n * one['wall_ms'] / cost['wall_ms']:.2f}, "
            f"CPU x{n * one['cpu_ms'] / cost['cpu_ms']:.2f}"
        )
    ceiling = 4 * one["cpu_ms"] / costs[4]["cpu_ms"]
    for i, run in enumerate(runs):
        ratio = run["n4"] / run["sequential"]
        print(
            f"round {i}: n=4 {run['n4']:.1f} tok/s, four sequential {run['sequential']:.1f} "
            f"tok/s, ratio {ratio:.2f}x; generation decodes by sequences held {run['sizes']}"
        )
    ratio = statistics.median(r["n4"] / r["sequential"] for r in runs)
    print(f"n=4 / four sequential: {ratio:.2f}x (median); ceiling from step CPU: {ceiling:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
