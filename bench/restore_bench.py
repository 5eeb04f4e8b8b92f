"""KV prefix restore after a restart (issue 23): first-call TTFT of a fresh engine that
restored a saved system prompt, against a fresh engine that computes it cold.

A "previous worker" engine serves two calls sharing a ~1k-token system prompt and stops: its
hot prefix is saved (engine/prefix_snapshots.py). Then, per round and in alternating order,
a fresh engine without snapshots (cold) and a fresh engine with the snapshot folder
(restored) each load, take one call with the system prompt and a new question, and close.
TTFT is from submit to the first streamed text, as a client of the engine sees it; the
restore itself happens while the engine loads, so load times are reported beside it.

Run from the repository root, one bench at a time:
  flock /tmp/herd-bench.lock env PYTHONPATH=. python bench/restore_bench.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ratios import describe, headline, paired

from app.engine.batched import BatchedEngine
from app.engine.events import TextDelta
from app.engine.factory import load_batched_engine
from app.engine.loader import LoadOptions
from app.engine.prefix_snapshots import SnapshotConfig
from app.engine.requests import ChatMessage, GenerationRequest, SamplingParams
from app.store.demo import find_demo_model

TARGET = 0.3
SYSTEM = "You are the support assistant of a hardware shop. " + " ".join(
    f"Policy {i}: items of category {i} may be returned within {10 + i} days with a receipt; "
    f"refunds go to the original card; staff never promise delivery dates for category {i}."
    for i in range(28)
)
QUESTIONS = [f"Can I return an item of category {i} after {i + 12} days?" for i in range(40)]


def request(question: str) -> GenerationRequest:
    messages = (ChatMessage("system", SYSTEM), ChatMessage("user", question))
    sampling = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    return GenerationRequest(messages=messages, sampling=sampling)


async def first_call(engine: BatchedEngine, question: str) -> tuple[float, int, int, str]:
    """(TTFT ms, prompt tokens, cached tokens, text) of one call."""
    started = time.perf_counter()
    job = await engine.submit(request(question))
    ttft = float("nan")
    texts = []
    async for event in job.events():
        if isinstance(event, TextDelta):
            if not texts:
                ttft = (time.perf_counter() - started) * 1000
            texts.append(event.text)
        else:
            usage = event.usage
            return ttft, usage.prompt_tokens, usage.cached_tokens, "".join(texts)
    raise RuntimeError("no Finished event")


def load(options: LoadOptions, folder: Path | None) -> tuple[BatchedEngine, float]:
    started = time.perf_counter()
    config = None if folder is None else SnapshotConfig(folder)
    engine = load_batched_engine(options, snapshots=config)
    return engine, (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: demo model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = args.model or find_demo_model().path
    options = LoadOptions(model, n_ctx=args.n_ctx, parallel=args.parallel, threads=args.threads)
    folder = Path(tempfile.mkdtemp(prefix="herd-restore-bench-")) / "kv_snapshots"
    try:
        return run(args, options, folder)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


def run(args: argparse.Namespace, options: LoadOptions, folder: Path) -> int:
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    # The previous worker: two calls share the system prompt, then it stops (saves).
    previous, _ = load(options, folder)
    for question in QUESTIONS[:2]:
        asyncio.run(first_call(previous, question))
    previous.close()
    files = list(folder.glob("*/*.kv"))
    size = sum(p.stat().st_size for p in files)
    print(f"snapshot: {len(files)} file(s), {size / 2**20:.1f} MiB")
    # The cost of a hot save on the scheduler thread (a third reuse makes it hot).
    hot_folder = folder.parent / "hot"
    hot, _ = load(options, hot_folder)
    for question in QUESTIONS[2:6]:
        asyncio.run(first_call(hot, question))
    save_ms = list(hot._snapshots.save_ms)
    hot.close()
    cold_ttft: list[float] = []
    warm_ttft: list[float] = []
    cold_load: list[float] = []
    warm_load: list[float] = []
    for i in range(args.rounds):
        question = QUESTIONS[10 + i]
        order = [None, folder] if i % 2 == 0 else [folder, None]
        texts = {}
        for which in order:
            engine, load_ms = load(options, which)
            try:
                ttft, prompt, cached, text = asyncio.run(first_call(engine, question))
            finally:
                engine.close()
            texts[which is None] = text
            (cold_ttft if which is None else warm_ttft).append(ttft)
            (cold_load if which is None else warm_load).append(load_ms)
            label = "cold" if which is None else "restored"
            print(
                f"round {i + 1} {label:8}: TTFT {ttft:7.1f} ms, load {load_ms:6.0f} ms, "
                f"prompt {prompt} tokens, cached {cached}"
            )
        if texts[True] != texts[False]:
            print(f"round {i + 1}: OUTPUTS DIFFER: {texts[True]!r} vs {texts[False]!r}")
            return 1
    ratio = paired(warm_ttft, cold_ttft)
    print(f"cold TTFT median {statistics.median(cold_ttft):.1f} ms")
    print(f"restored TTFT median {statistics.median(warm_ttft):.1f} ms")
    print(headline("restored/cold first-call TTFT", ratio, TARGET, higher_is_better=False))
    print(describe("restored/cold engine load time", paired(warm_load, cold_load)))
    print(f"hot save on the scheduler thread: {', '.join(f'{x:.1f}' for x in save_ms)} ms")
    print(f"outputs identical in all {args.rounds} rounds")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
