"""Latency under load: Herd's worker vs llama-server, open-loop Poisson schedules.

Same GGUF (the demo SmolLM2 model by default), same slots, threads and flash-attention
setting, both servers up side by side for the whole run. Streamed chat completions with
prompt and answer lengths drawn from a fixed seeded distribution (temperature 0,
ignore_eos, so every answer is exactly max_tokens long). Not part of CI. Example:

    flock /tmp/herd-bench.lock python bench/latency_bench.py \\
        --llama-server /work/anchors/bin/llama-server

Steps: (a) each server's capacity, closed loop with every slot busy, rounds interleaved;
(b) for each round and load level (50/70/90 % by default) one seeded Poisson schedule fed
open-loop to each server (the server order alternates per round), in two views: "own"
(each server at that share of its OWN median capacity, as issue 23 defines the targets)
and "common" (both at that share of the LOWER capacity: the same calls/s, like for like).
Latencies count from each call's scheduled arrival, so a late client counts against the
server it feeds, the same for both. --streams N... adds tokens/s at N streams (closed
loop, fixed 128-token answers); on a machine with nvidia-smi each server's VRAM is read
while it is loaded, beside Herd's own estimate (app/store/estimate.py).

Herd runs as in production: engine_bench.herd_stand's registered `herd worker` (its
gateway idles beside it, unused). llama-server runs with --no-repack (this VM's AMX quirk,
which Herd's worker avoids by itself) and `-fa auto`, llama.cpp's default context setting,
which Herd's worker keeps (it sets no flash-attention type).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))  # engine_bench, when imported by tests

from engine_bench import (
    REPO,
    anchor_command,
    free_port,
    herd_stand,
    one_stream,
    pct,
    wait_ready,
)
from latency_report import (
    SERVERS,
    VIEWS,
    commit,
    machine,
    markdown,
    ratio_rows,
    server_version,
)

STREAM_TOKENS = 128
# Words that SmolLM2's tokenizer keeps as one token each after a space: a prompt of n words
# is about n tokens (plus the chat template's), so the drawn lengths mean tokens.
WORD_TEXT = (
    "the of and to in is was for on are with as by at from his her they this that have "
    "had not but what all were when we there can an your which their said if do will each "
    "about how up out them then she many some so these would other into has more two time "
    "like see way could people than first water been call who its now find long down day "
    "did get come made may part over new sound take only little work know place year live "
    "back give most very after thing our just name good man think say great where help "
    "through much line right too mean old any same tell boy follow came want show also "
    "around form three small set put end does another well large must big even such "
    "because turn here why ask went men read need land different home us move try kind "
    "hand picture again change off"
)
WORDS = tuple(WORD_TEXT.split())


@dataclass(frozen=True)
class Call:
    """One chat call of the workload: its user message and its answer length."""

    prompt_words: int
    max_tokens: int
    text: str


def draw_calls(
    seed: int,
    n: int,
    prompt_range: tuple[int, int] = (20, 400),
    answer_range: tuple[int, int] = (16, 96),
) -> list[Call]:
    """n calls, lengths uniform in the ranges (inclusive), words random: the same for a seed."""
    rng = random.Random(seed)
    calls = []
    for _ in range(n):
        words = rng.randint(*prompt_range)
        answer = rng.randint(*answer_range)
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        calls.append(Call(words, answer, text))
    return calls


def poisson_arrivals(rate: float, duration_s: float, seed: int) -> list[float]:
    """Arrival offsets (s) of a Poisson process of rate calls/s over duration_s.

    Drawn as unit-rate gaps divided by rate, so one seed at two rates gives the same
    schedule stretched in time: the same calls in the same order, only closer together."""
    if rate <= 0:
        return []
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(1.0) / rate
        if t >= duration_s:
            return arrivals
        arrivals.append(t)


@dataclass
class Outcome:
    """One call as the client saw it; times are seconds from the run's start."""

    scheduled_s: float
    token_at: list[float] = field(default_factory=list)  # when each content chunk came
    error: str | None = None
    # Tokens the answer holds: max_tokens (ignore_eos), or the chunks if more. A chunk may
    # carry several tokens (drafts accepted in one step) or none (half a UTF-8 character).
    tokens: int = 0


def answer_tokens(o: Outcome) -> int:
    return max(o.tokens, len(o.token_at))


def summarize(outcomes: list[Outcome], window_s: float | None = None) -> dict[str, float]:
    """TTFT and inter-token percentiles (ms), throughput and errors of one run.

    window_s: count only tokens and completions inside [0, window_s] (closed loop: the
    rate while every slot is busy); None: over the run until its last token."""
    ok = [o for o in outcomes if o.error is None and o.token_at]
    ttft = [(o.token_at[0] - o.scheduled_s) * 1000 for o in ok]
    gaps = [(b - a) * 1000 for o in ok for a, b in pairwise(o.token_at)]
    if window_s is None:
        span = max((o.token_at[-1] for o in ok), default=float("nan"))
        tokens, done = sum(answer_tokens(o) for o in ok), len(ok)
    else:
        span = window_s
        # A call's tokens spread evenly over its chunks, counted as far as the window.
        tokens = sum(
            answer_tokens(o) * sum(t <= window_s for t in o.token_at) / len(o.token_at) for o in ok
        )
        done = sum(1 for o in ok if o.token_at[-1] <= window_s)
    out = {f"ttft_p{q}_ms": pct(ttft, q / 100) for q in (50, 95, 99)}
    out |= {f"itl_p{q}_ms": pct(gaps, q / 100) for q in (50, 95, 99)}
    out["tokens_per_s"] = tokens / span if span > 0 else float("nan")
    out["calls_per_s"] = done / span if span > 0 else float("nan")
    out["calls"] = float(len(outcomes))
    out["errors"] = float(len(outcomes) - len(ok))
    return out


def order(round_no: int, servers: list[str] | tuple[str, ...] = SERVERS) -> list[str]:
    """Servers in the order they run in this round: alternating, so none always goes first."""
    return list(servers) if round_no % 2 == 0 else list(reversed(servers))


async def timed_call(
    client: httpx.AsyncClient, url: str, call: Call, t0: float, at: float, timeout_s: float
) -> Outcome:
    """One streamed call started now, for an arrival scheduled at t0 + at; an error after
    timeout_s in all."""
    out = Outcome(scheduled_s=at)
    sent = time.perf_counter() - t0
    messages = [{"role": "user", "content": call.text}]
    try:
        # httpx's timeout is per read: a stream that trickles must still end in time.
        result = await asyncio.wait_for(
            one_stream(client, url, messages, call.max_tokens), timeout_s
        )
    except (httpx.HTTPError, json.JSONDecodeError, TimeoutError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
        return out
    out.token_at = [sent + t for t in result.token_times]
    out.tokens = call.max_tokens
    if not out.token_at:
        out.error = "no tokens"
    return out


def client(timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=64)
    return httpx.AsyncClient(timeout=timeout_s, limits=limits)


async def open_loop(
    url: str, calls: list[Call], arrivals: list[float], timeout_s: float
) -> list[Outcome]:
    """Start call i at arrivals[i] whether or not earlier ones finished; wait for all."""
    async with client(timeout_s) as c:
        t0 = time.perf_counter()
        tasks = []
        for call, at in zip(calls, arrivals, strict=False):
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(timed_call(c, url, call, t0, at, timeout_s)))
        return list(await asyncio.gather(*tasks))


async def closed_loop(
    url: str, calls: list[Call], clients: int, duration_s: float, timeout_s: float
) -> list[Outcome]:
    """clients callers, each starting its next call as soon as its last one ends, until
    duration_s; calls are taken in order from calls (cycled)."""
    outcomes: list[Outcome] = []
    taken = iter(range(10**9))
    async with client(timeout_s) as c:
        t0 = time.perf_counter()

        async def caller() -> None:
            while (now := time.perf_counter() - t0) < duration_s:
                call = calls[next(taken) % len(calls)]
                outcomes.append(await timed_call(c, url, call, t0, now, timeout_s))

        await asyncio.gather(*(caller() for _ in range(clients)))
    return outcomes


@dataclass
class Server:
    url: str
    pid: int


@contextmanager
def herd_worker(args: argparse.Namespace) -> Iterator[Server]:
    """engine_bench.herd_stand's registered worker. herd_stand keeps its processes to
    itself and has no GPU-layers flag, so the worker's argv (and its process) are taken on
    the way through gateway_bench.running, which herd_stand imports when it starts."""
    import gateway_bench

    original = gateway_bench.running
    extra = ["--n-gpu-layers", str(args.n_gpu_layers)] if args.n_gpu_layers else []
    seen: list[subprocess.Popen[bytes]] = []

    @contextmanager
    def running_with_flags(
        argv: list[str], *rest: Any, **options: Any
    ) -> Iterator[subprocess.Popen[bytes]]:
        worker = argv[3:4] == ["worker"]  # [python, -m, app.cli, worker, ...]
        with original([*argv, *extra] if worker else argv, *rest, **options) as process:
            if worker:
                seen.append(process)
            yield process

    gateway_bench.running = running_with_flags
    try:
        with herd_stand(args, args.parallel) as urls:
            gateway_bench.running = original
            yield Server(urls["herd"], seen[0].pid)
    finally:
        gateway_bench.running = original


def llama_server_argv(args: argparse.Namespace, port: int) -> list[str]:
    """engine_bench's llama-server command (Herd's flash-attention setting and CPU
    extra-buffer choice: --no-repack where Herd's worker keeps them off, as on this AMX
    VM), plus the GPU layers (-1: all)."""
    ngl = "all" if args.n_gpu_layers < 0 else str(args.n_gpu_layers)
    return [*anchor_command("llama-server", args, args.parallel, port), "-ngl", ngl]


@contextmanager
def llama_server(args: argparse.Namespace, log: Path) -> Iterator[Server]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            llama_server_argv(args, port), cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        yield Server(url, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def vram_mib(pid: int) -> float | None:
    """GPU memory (MiB) nvidia-smi lists for pid and its descendants; None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    done = subprocess.run(query, capture_output=True, text=True, timeout=30)
    used = {int(a): float(b) for a, _, b in (x.partition(",") for x in done.stdout.splitlines())}
    try:
        family = {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    except psutil.NoSuchProcess:
        family = {pid}
    return sum(v for p, v in used.items() if p in family)


def herd_estimate_mib(args: argparse.Namespace) -> dict[str, float]:
    """Herd's own memory estimate for these settings (what `herd models list` shows)."""
    from app.store.estimate import estimate_memory
    from app.store.gguf_file import read_gguf

    est = estimate_memory(
        read_gguf(Path(args.model)).layout, args.n_gpu_layers, args.n_ctx, args.parallel
    )
    return {"vram_mib": est.vram_bytes / 2**20, "ram_mib": est.ram_bytes / 2**20}


Phase = dict[str, list[dict[str, float]]]  # server -> one summary per round


def closed_phase(
    urls: dict[str, str],
    args: argparse.Namespace,
    draw: Callable[[int], list[Call]],
    clients: int,
    what: str,
) -> Phase:
    """Closed-loop runs, rounds interleaved, each args.capacity_duration long; draw(round) gives
    the round's calls: new prompts every round (the same for every server in it), so no
    server answers a prompt it has seen (llama-server keeps old prompts' KV in RAM, and a
    repeat would be a cache hit, not a prefill)."""
    out: Phase = {s: [] for s in urls}
    for r in range(args.rounds):
        calls = draw(r)
        for s in order(r, list(urls)):
            outs = asyncio.run(
                closed_loop(urls[s], calls, clients, args.capacity_duration, args.call_timeout)
            )
            out[s].append(summarize(outs, args.capacity_duration))
            print(f"{what} round {r} {s}: {json.dumps(out[s][-1])}", flush=True)
    return out


def load_phase(
    urls: dict[str, str], args: argparse.Namespace, capacity: dict[str, float]
) -> dict[str, dict[str, Phase]]:
    """view -> level -> server -> one open-loop summary per round."""
    low = min(capacity.values())
    runs = {v: {str(lv): {s: [] for s in urls} for lv in args.levels} for v in VIEWS}
    for r in range(args.rounds):
        for i, level in enumerate(args.levels):
            for s in order(r, list(urls)):
                for v, view in enumerate(VIEWS):
                    # Prompts never repeat across runs (see closed_phase); within a round,
                    # level and view every server gets the same schedule and prompts.
                    seed = args.seed * 1000 + r * 100 + i * 10 + v
                    rate = (capacity[s] if view == "own" else low) * level
                    arrivals = poisson_arrivals(rate, args.duration, seed)
                    calls = draw_calls(seed, len(arrivals), args.prompt_words, args.max_tokens)
                    outs = asyncio.run(open_loop(urls[s], calls, arrivals, args.call_timeout))
                    runs[view][str(level)][s].append(summarize(outs) | {"rate": rate})
                    line = json.dumps(runs[view][str(level)][s][-1])
                    print(f"round {r} {view} {level:.0%} {s}: {line}", flush=True)
    return runs


def measure(servers: dict[str, Server], args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, capacity, tokens/s at --streams, then the load rounds; VRAM read after each
    phase (the largest reading kept)."""
    urls = {s: x.url for s, x in servers.items()}
    vram: dict[str, float | None] = {s: None for s in servers}

    def read_vram() -> None:
        for s, x in servers.items():
            now = vram_mib(x.pid)
            vram[s] = now if vram[s] is None else max(vram[s] or 0.0, now or 0.0)

    warm = draw_calls(args.seed - 1, args.parallel, args.prompt_words, args.max_tokens)
    for url in urls.values():
        asyncio.run(closed_loop(url, warm, args.parallel, 0.1, args.call_timeout))
    read_vram()
    def workload(r: int) -> list[Call]:
        return draw_calls(args.seed + 100 + r, 2000, args.prompt_words, args.max_tokens)

    saturation = closed_phase(urls, args, workload, args.parallel, "capacity")
    capacity = {s: statistics.median(x["calls_per_s"] for x in saturation[s]) for s in urls}

    def fixed(r: int) -> list[Call]:
        return draw_calls(args.seed + 200 + r, 200, (32, 32), (STREAM_TOKENS, STREAM_TOKENS))

    streams = {str(n): closed_phase(urls, args, fixed, n, f"{n} streams") for n in args.streams}
    read_vram()
    runs = load_phase(urls, args, capacity) if args.levels else {}
    read_vram()
    return {
        "capacity": capacity,
        "saturation": saturation,
        "streams": streams,
        "runs": runs,
        "vram_mib": vram,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_server = os.environ.get("LLAMA_SERVER", "/work/anchors/bin/llama-server")
    p.add_argument("--llama-server", default=default_server, help="the anchor's binary")
    p.add_argument("--no-anchor", action="store_true", help="Herd alone (no ratios)")
    p.add_argument("--model", default=None, help="GGUF file (default: the demo model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=4, help="slots of both servers")
    p.add_argument("--n-ctx", type=int, default=2048, help="context tokens per slot")
    p.add_argument("--flash-attn", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--n-gpu-layers", type=int, default=0, help="both servers; -1: all")
    p.add_argument("--levels", type=float, nargs="*", default=[0.5, 0.7, 0.9])
    p.add_argument("--streams", type=int, nargs="*", default=[], help="tokens/s at N streams")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=30.0, help="s of arrivals per load run")
    p.add_argument("--capacity-duration", type=float, default=20.0, help="s per closed loop")
    p.add_argument("--prompt-words", type=int, nargs=2, default=[20, 400])
    p.add_argument("--max-tokens", type=int, nargs=2, default=[16, 96])
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--call-timeout", type=float, default=180.0)
    p.add_argument("--json", default=None, help="also write every run's numbers here")
    p.add_argument("--markdown", default=None, help="also write the markdown block here")
    args = p.parse_args(argv)
    if args.model is None:
        from app.store.demo import find_demo_model

        args.model = str(find_demo_model().path)
    return args


def stop_on_sigterm() -> None:
    """SIGTERM (timeout, kill) ends the run through its finally blocks, so the servers it
    started are stopped too rather than left running."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stop_on_sigterm()
    args = parse_args(argv)
    if not args.no_anchor and not Path(args.llama_server).is_file():
        print(f"no llama-server at {args.llama_server}: --llama-server, LLAMA_SERVER or "
              "--no-anchor", file=sys.stderr)  # fmt: skip
        return 2
    est = herd_estimate_mib(args)
    meta = {
        "command": "python bench/latency_bench.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "commit": commit(),
        "load_start": f"{os.getloadavg()[0]:.2f}",
        "llama_server": "not run" if args.no_anchor else server_version(args.llama_server),
        "estimate": f"VRAM {est['vram_mib']:.0f} MiB, RAM {est['ram_mib']:.0f} MiB",
    }
    work = REPO / "bench" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        servers = {"herd": stack.enter_context(herd_worker(args))}
        if not args.no_anchor:
            log = work / "latency-llama-server.log"
            servers["llama-server"] = stack.enter_context(llama_server(args, log))
        result = measure(servers, args)
    meta["load_end"] = f"{os.getloadavg()[0]:.2f}"
    text = markdown(result, args, meta)
    print(text)
    for line in ratio_rows(result, args.levels if result["runs"] else [])[1]:
        print(line)
    if args.json:
        doc = {"meta": meta, "estimate_mib": est, "args": vars(args), **result}
        Path(args.json).write_text(json.dumps(doc, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
