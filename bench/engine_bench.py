"""Engine benchmark: Herd's batched worker vs llama-server vs llama-cpp-python's server.

Same GGUF, same threads, same flash-attention setting (Herd's: llama.cpp's default, auto) and
same choice of CPU extra buffers (HERD_CPU_EXTRA_BUFFERS, as Herd's worker reads it) for
every server; all measured over HTTP with streaming chat completions. Not part of CI. Example:

    python bench/engine_bench.py --llama-server /path/to/llama-server --threads 2

Every server stays up for the whole run, and the run is --repeat rounds: in each round every
scenario runs once on every server, the servers' order rotated by one per round, so a busy
moment of the shared machine hits them alike. Reported per scenario: each server's median
over rounds, and its ratio to the anchor (llama-server, or llama-cpp-python's server when
llama-server is not given) both as the ratio of the medians and as the median of the
per-round ratios with their spread; headlines say "met" only when both meet the target
(bench/ratios.py).

Herd runs as it does in production: a real `herd worker` registered in a fresh database on
the embedded PostgreSQL under bench/.work (alias -> deployment -> the worker's own row,
heartbeated), and a real `herd gateway` in front of it with its response cache off. The
same worker is measured twice: called directly ("herd") and through the gateway
("herd-gateway").
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
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
from engine_report import Rounds, headlines, print_table, summary

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

    from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
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
        deployment = Deployments(db).create(DeploymentRequest(alias=ALIAS, serving=serving))
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


# Herd's worker builds its batched context from llama_context_default_params()
# (app/engine/batch_context.py) and sets no flash-attention type, so it runs with llama.cpp's
# default, "auto". The worker has no setting for it: the anchors follow Herd.
HERD_FLASH_ATTN = "auto"
LOG_DIR = REPO / "bench" / ".work"
# llama-cpp-python's server, loaded with Herd's choice of CPU extra buffers (repacked
# weights, AMX): its own settings have no switch for them (app/engine/cpu_buffers.py).
LLAMA_CPP_PYTHON_SERVER = (
    "import runpy, sys\n"
    "from app.engine.cpu_buffers import ExtraBuffers, extra_buffers_allowed, model_params\n"
    "with model_params(extra_buffers_allowed(ExtraBuffers(sys.argv.pop(1)))):\n"
    "    runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)\n"
)


def cpu_extra_buffers() -> str:
    """HERD_CPU_EXTRA_BUFFERS as Herd's worker reads it (auto, on or off)."""
    return os.environ.get("HERD_CPU_EXTRA_BUFFERS", "auto").lower()


def repack_allowed() -> bool:
    """Whether Herd's worker loads with llama.cpp's extra CPU buffers on this machine."""
    from app.engine.cpu_buffers import ExtraBuffers, extra_buffers_allowed

    return bool(extra_buffers_allowed(ExtraBuffers(cpu_extra_buffers())))


def anchor_command(kind: str, args: argparse.Namespace, parallel: int, port: int) -> list[str]:
    """The anchor's command line, with the flash-attention setting of args.flash_attn (Herd's
    "auto" for scripts without that option) and Herd's CPU extra-buffer choice."""
    model, t = args.model, str(args.threads)
    flash_attn = getattr(args, "flash_attn", HERD_FLASH_ATTN)
    if kind == "llama-cpp-python":
        cmd = [sys.executable, "-c", LLAMA_CPP_PYTHON_SERVER, cpu_extra_buffers()]
        cmd += ["--model", model, "--port", str(port), "--n_ctx", str(args.n_ctx)]
        cmd += ["--n_threads", t, "--n_threads_batch", t]
        # Its setting is a bool (enabled or disabled, no auto); llama.cpp resolves auto to
        # enabled where every layer's attention runs on a backend that has it, as on a CPU.
        cmd += ["--flash_attn", "False" if flash_attn == "off" else "True"]
        # Its default cuts a running stream off when the next request arrives.
        cmd += ["--interrupt_requests", "False"]
        return cmd
    cmd = [args.llama_server, "-m", model, "--port", str(port), "-t", t, "-tb", t]
    cmd += ["--parallel", str(parallel), "-c", str(args.n_ctx * parallel), "--no-webui"]
    cmd += ["-fa", flash_attn]
    if not repack_allowed():
        cmd.append("--no-repack")
    return cmd


def anchor_log(kind: str) -> Path:
    """Where anchor_server writes this process's anchor's log (llama.cpp's own lines)."""
    return LOG_DIR / f"{kind}-{os.getpid()}.log"


@contextmanager
def anchor_server(kind: str, args: argparse.Namespace, parallel: int) -> Iterator[str]:
    """llama-server or llama-cpp-python's server on a free port; yields its URL."""
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    if kind == "llama-cpp-python" and importlib.util.find_spec("sse_starlette") is None:
        raise RuntimeError(
            "llama-cpp-python's server needs: pip install 'llama-cpp-python[server]'"
        )
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    with anchor_log(kind).open("wb") as log:
        proc = subprocess.Popen(
            anchor_command(kind, args, parallel, port),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def attention_lines(kind: str) -> list[str]:
    """What llama.cpp logged about flash attention when the anchor created its context."""
    try:
        text = anchor_log(kind).read_text(errors="replace")
    except OSError:
        return []
    lines = [
        line.strip()
        for line in text.splitlines()
        if "flash" in line.lower() and "FLASH_ATTN_EXT" not in line  # not graph-node lines
    ]
    return lines[:3]


Run = Callable[[str], Awaitable[dict[str, float]]]


def scenarios(args: argparse.Namespace, round_no: int) -> list[tuple[str, Run]]:
    """The scenarios of one round, in order; the shared-prefix pair in the first
    --prefix-repeat rounds only (each takes tens of seconds)."""
    out: list[tuple[str, Run]] = []
    for n in dict.fromkeys([1, *args.concurrency]):
        name = "1 stream" if n == 1 else f"{n} streams"
        out.append((name, partial(scenario_concurrent, n=n, max_tokens=args.max_tokens)))
    if not args.no_prefix and round_no < args.prefix_repeat:
        for name, shared in (("cold", False), ("shared", True)):
            run = partial(scenario_shared_prefix, shared=shared)
            out.append((f"8 chats, 1k system prompt, {name}", run))
    return out


async def run_once(url: str, run: Run) -> dict[str, float] | None:
    """One run of a scenario; a run the server broke off (a dropped connection) is run again
    once, and says so; None when that fails too."""
    for attempt in (1, 2):
        try:
            return await run(url)
        except httpx.HTTPError as exc:
            print(f"  {url}: attempt {attempt} failed ({type(exc).__name__}: {exc})", flush=True)
    return None


async def interleaved(targets: dict[str, str], args: argparse.Namespace, rounds: Rounds) -> None:
    """--repeat rounds; in each, every scenario runs once on every server, the servers'
    order rotated by one per round, so a busy moment of the shared machine or a drift in its
    speed hits every server alike. Fills rounds[r][server][scenario] as it goes."""
    names = list(targets)
    for url in targets.values():
        await scenario_concurrent(url, 1, 4)  # warm-up: pages the weights in
    for r in range(args.repeat):
        order = names[r % len(names) :] + names[: r % len(names)]
        result: dict[str, dict[str, dict[str, float]]] = {name: {} for name in names}
        rounds.append(result)
        for scenario, run in scenarios(args, r):
            for name in order:
                metrics = await run_once(targets[name], run)
                if metrics is not None:
                    result[name][scenario] = metrics
                row = {"round": r, "server": name, "scenario": scenario, **(metrics or {})}
                print(json.dumps(row), flush=True)


def settings_lines(args: argparse.Namespace, servers: list[str]) -> list[str]:
    """The settings every server ran with, and what the anchors' llama.cpp logged."""
    fa = args.flash_attn
    lines = [
        f"model {args.model}, threads {args.threads}, parallel {args.parallel}, "
        f"n_ctx/slot {args.n_ctx}, max_tokens {args.max_tokens}, rounds {args.repeat} "
        f"(servers interleaved, order rotated per round)",
        f"flash attention: herd llama.cpp default ({HERD_FLASH_ATTN}); llama-server -fa {fa}; "
        f"llama-cpp-python --flash_attn {'False' if fa == 'off' else 'True'} (no auto setting)",
        f"CPU extra buffers (repack): HERD_CPU_EXTRA_BUFFERS={cpu_extra_buffers()} -> "
        f"{'allowed' if repack_allowed() else 'off (llama-server --no-repack)'} for every server",
    ]
    for kind in servers:
        if kind in ("llama-server", "llama-cpp-python"):
            lines += [f"  {kind} log: {line}" for line in attention_lines(kind)]
    return lines


def machine_line(when: str) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"{when}: {stamp}, load average {load}"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="GGUF file (default: the demo model)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for every server")
    p.add_argument("--parallel", type=int, default=16, help="slots of every batching server")
    p.add_argument("--n-ctx", type=int, default=2048, help="context tokens per slot")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per stream")
    p.add_argument("--concurrency", type=int, nargs="*", default=[4, 8, 16])
    p.add_argument("--llama-server", default=None, help="llama-server binary (the anchor)")
    p.add_argument("--servers", nargs="*", default=list(SERVERS), choices=SERVERS)
    p.add_argument("--repeat", type=int, default=3, help="rounds; medians over rounds shown")
    p.add_argument("--prefix-repeat", type=int, default=1, help="rounds with the prefix pair")
    p.add_argument("--no-prefix", action="store_true", help="skip the shared-prefix scenario")
    p.add_argument(
        "--flash-attn",
        choices=["auto", "on", "off"],
        default=HERD_FLASH_ATTN,
        help="for the anchors; Herd's worker always runs llama.cpp's default (auto), so any "
        "other value is refused while Herd is measured",
    )
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


def main() -> int:
    from app.store.demo import find_demo_model

    args = parse_args()
    args.model = args.model or str(find_demo_model().path)
    servers = [s for s in args.servers if s != "llama-server" or args.llama_server]
    if args.flash_attn != HERD_FLASH_ATTN and {"herd", "herd-gateway"} & set(servers):
        raise SystemExit(f"--flash-attn {args.flash_attn}: Herd's worker runs auto only")
    start = machine_line("start")
    print(start, flush=True)
    rounds: Rounds = []
    with ExitStack() as stack:
        targets: dict[str, str] = {}
        for kind in servers:
            if kind in ("herd", "herd-gateway"):
                if not {"herd", "herd-gateway"} & set(targets):
                    urls = stack.enter_context(herd_stand(args, args.parallel))
                    targets.update({n: u for n, u in urls.items() if n in servers})
            else:
                targets[kind] = stack.enter_context(anchor_server(kind, args, args.parallel))
        try:
            asyncio.run(interleaved(targets, args, rounds))
        except httpx.HTTPError as exc:
            print(f"stopped by {type(exc).__name__}: {exc}; reporting what was measured")
    anchors = [k for k in ("llama-server", "llama-cpp-python") if k in targets]
    anchor = anchors[0] if anchors else next(iter(targets))
    print("\n".join([start, machine_line("end"), *settings_lines(args, servers)]))
    print(f"anchor {anchor}; cells: median over rounds (ratio of medians / median of "
          "per-round ratios [lowest-highest round])")  # fmt: skip
    table = summary(rounds, anchor)
    print_table(table)
    for line in headlines(rounds, anchor):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
