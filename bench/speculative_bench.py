"""Prompt-lookup decoding benchmark: drafting on vs off on the same engine, temperature 0.

One BatchedEngine (what `herd worker` serves; loaded here in-process, no HTTP) runs every
request twice per round, once with drafts and once opted out (SamplingParams.draft, the
worker's `"speculative": false`), in an order that alternates between rounds. Not part of
CI. Example:

    flock /tmp/herd-bench.lock env PYTHONPATH=. python bench/speculative_bench.py --rounds 3

Workloads (one request at a time, --parallel slots, ignore_eos so both runs decode
--max-tokens tokens):
- extraction: a 1-2k-token inventory, then an answer that copies lines of it (the copy
  starts with the first line, as a reader asked to "repeat the list" would);
- chat: open questions whose answers copy nothing (drafting must not slow them down).
Reported per workload: decode tokens/s (completion tokens after the first over the time
after the first token, summed over the workload's requests) on over off, as the ratio of
the medians and the median of per-round ratios (bench/ratios.py), the drafts accepted, and
whether every output was the same token for token (text and each token's log probability).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ratios import describe, headline, paired

from app.engine.batched import BatchedEngine
from app.engine.events import Finished, TextDelta
from app.engine.factory import load_batched_engine
from app.engine.loader import LoadOptions
from app.engine.requests import ChatMessage, GenerationRequest, SamplingParams
from app.store.demo import find_demo_model

TARGET = 1.5  # extraction decode tokens/s, on over off (issue 23)
CHAT_FLOOR = 0.95  # chat: drafting should cost at most noise
CITIES = ["Leeds", "Oslo", "Porto", "Lyon", "Graz", "Turin", "Ghent", "Cork"]
PARTS = ["copper fittings", "brass valves", "steel bolts", "rubber seals", "oak panels"]
CHAT = [
    "Tell me a story about a dragon.",
    "Explain how rain forms.",
    "Describe a busy market.",
]


def inventory(lines: int, seed: int) -> str:
    return "\n".join(
        f"Order {10234 + 37 * i + seed}: {(i + seed) % 7 + 2} x "
        f"{PARTS[(i * 3 + seed) % len(PARTS)]}, shipped to {CITIES[(i * 5 + seed) % 8]} on "
        f"2024-{i % 12 + 1:02d}-{(i + seed) % 27 + 1:02d}, status "
        f"{'delivered' if (i + seed) % 3 else 'pending'}."
        for i in range(lines)
    )


def extraction_requests(lines: int) -> list[GenerationRequest]:
    """Raw prompts: the document, then the start of its copy (the demo model is too small to
    follow an instruction to copy reliably; the copy itself is what is measured)."""
    out = []
    for seed in range(3):
        doc = inventory(lines, seed)
        prompt = (
            f"Inventory:\n{doc}\n\nThe same inventory, every line repeated verbatim:\n"
            + doc.split("\n")[0]
            + "\n"
        )
        out.append(GenerationRequest(prompt=prompt))
    return out


def chat_requests() -> list[GenerationRequest]:
    return [GenerationRequest(messages=(ChatMessage("user", q),)) for q in CHAT]


@dataclass
class Run:
    text: str
    logprobs: list[float]
    decode_tokens: int
    decode_s: float
    drafted: int
    accepted: int


async def run_one(engine: BatchedEngine, request: GenerationRequest, draft: bool, n: int) -> Run:
    sampling = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, logprobs=0, draft=draft)
    job = await engine.submit(GenerationRequest(**{**request.__dict__, "sampling": sampling}))
    text, logprobs = [], []
    async for event in job.events():
        if isinstance(event, TextDelta):
            text.append(event.text)
            logprobs.extend(t.logprob for t in event.tokens)
        elif isinstance(event, Finished):
            t, u = event.timings, event.usage
            decode_s = (u.completion_tokens - 1) / t.tokens_per_second if t.tokens_per_second else 0
            return Run(
                "".join(text),
                logprobs,
                u.completion_tokens - 1,
                decode_s,
                u.drafted_tokens,
                u.accepted_tokens,
            )
    raise RuntimeError("no Finished event")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def bench(args: argparse.Namespace) -> dict[str, object]:
    model = Path(args.model) if args.model else find_demo_model().path
    options = LoadOptions(model, n_ctx=args.n_ctx, parallel=args.parallel, threads=args.threads)
    engine = load_batched_engine(options)
    every = {"extraction": extraction_requests(args.lines), "chat": chat_requests()}
    workloads = {name: every[name] for name in args.workloads}
    rates: dict[str, dict[bool, list[float]]] = {w: {True: [], False: []} for w in workloads}
    same = {w: True for w in workloads}
    first_diff: dict[str, list[str]] = {w: [] for w in workloads}
    drafted = {w: 0 for w in workloads}
    accepted = {w: 0 for w in workloads}
    prompt_tokens = {
        w: [len(engine._model.prepare(r).tokens) for r in reqs] for w, reqs in workloads.items()
    }
    try:
        for rnd in range(args.rounds):
            order = (True, False) if rnd % 2 == 0 else (False, True)
            for name, requests in workloads.items():
                done: dict[bool, list[Run]] = {True: [], False: []}
                for i, request in enumerate(requests):
                    for draft in order if i % 2 == 0 else order[::-1]:
                        done[draft].append(await run_one(engine, request, draft, args.max_tokens))
                for draft in (True, False):
                    runs = done[draft]
                    seconds = sum(r.decode_s for r in runs)
                    rates[name][draft].append(sum(r.decode_tokens for r in runs) / seconds)
                for i, (on, off) in enumerate(zip(done[True], done[False], strict=True)):
                    drafted[name] += on.drafted
                    accepted[name] += on.accepted
                    if on.text != off.text or on.logprobs != off.logprobs:
                        same[name] = False
                        first_diff[name].append(f"round {rnd} request {i}")
                print(
                    f"round {rnd} {name}: on {rates[name][True][-1]:.1f} tok/s, "
                    f"off {rates[name][False][-1]:.1f} tok/s",
                    flush=True,
                )
    finally:
        engine.close()
    report: dict[str, object] = {}
    for name in workloads:
        ratio = paired(rates[name][True], rates[name][False])
        label = f"{name} decode tokens/s, on/off"
        if name == "extraction":
            line = headline(label, ratio, TARGET)
        else:
            worst = min(ratio.of_medians, ratio.median_of_rounds)
            line = describe(label, ratio) + f" (floor {CHAT_FLOOR}x: "
            line += ("met" if worst >= CHAT_FLOOR else "missed") + ")"
        report[name] = {
            "headline": line,
            "on_median": statistics.median(rates[name][True]),
            "off_median": statistics.median(rates[name][False]),
            "prompt_tokens": prompt_tokens[name],
            "drafted": drafted[name],
            "accepted": accepted[name],
            "identical": same[name],
            "differing": first_diff[name],
        }
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="GGUF file (default: the demo model)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--parallel", type=int, default=1, help="slots of the engine")
    p.add_argument("--n-ctx", type=int, default=4096, help="context tokens per slot")
    p.add_argument("--lines", type=int, default=60, help="inventory lines (~26 tokens each)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workloads", nargs="*", default=["extraction", "chat"])
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    # A copy made with git archive names its commit through HERD_BENCH_COMMIT.
    commit = (
        os.environ.get("HERD_BENCH_COMMIT")
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    )
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = load()
    report = asyncio.run(bench(args))
    print(f"\n{started}, commit {commit}, load average {load_before} -> {load()}")
    print(f"args: {vars(args)}")
    for r in report.values():
        assert isinstance(r, dict)
        print(r["headline"])
        print(
            f"  medians on {r['on_median']:.1f} / off {r['off_median']:.1f} tok/s; prompt "
            f"tokens {r['prompt_tokens']}; drafts accepted {r['accepted']} of {r['drafted']}; "
            f"outputs identical: {r['identical']} {r['differing'] or ''}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
