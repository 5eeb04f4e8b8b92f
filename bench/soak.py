"""Load and soak: mixed traffic against a real `herd up --demo` for a set time and rate.

Starts `herd up --demo` on loopback in its own HERD_HOME (embedded PostgreSQL, supervisor,
gateway, dashboard), deploys the SmolLM2-135M demo model under the alias `soak`, then sends
an open-loop mix at --rate operations per second for --duration seconds:

- chat: non-streamed chat completion through the gateway;
- stream: streamed chat completion (SSE) through the gateway;
- feedback: a thumbs up/down on a recent answer (POST /v1/feedback), each by its own user;
- analytics: one of the dashboard's queries (latency, traffic, engagement series, fleet
  summary) through app/analytics, as the Monitoring and Overview pages run them.

At most --max-in-flight operations run at once (bounded): an operation due while that many
are running is skipped and counted. Every --sample-s seconds the RSS of every Herd process
(herd up, gateway, supervisor, dashboard, each worker, the PostgreSQL server) is sampled.

Reports operations per second, latency p50/p99 per kind, errors by kind, the row-count
reconciliation (calls the gateway answered = new `requests` rows; feedback acknowledged =
new `feedback` rows) and memory at start/middle/end of the steady part with its slope.

    flock /tmp/herd-bench.lock python -m bench.soak --duration 600 --rate 4

Find a rate the machine sustains with a short run first (p99 stays near p50, no skips).
The result is printed and written as JSON under bench/.work/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import Engine, text

from app.analytics.monitoring import engagement_series, latency_series, traffic_series
from app.analytics.overview import fleet_summary
from app.analytics.scope import last
from app.config import Settings
from app.control.deployments import Deployments, ServingSettings
from app.db.database import Database
from app.store.catalog import ModelStore

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".work"
ALIAS = "soak"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 600.0
MIX = {"chat": 0.45, "stream": 0.35, "feedback": 0.12, "analytics": 0.08}
PROMPTS = (
    "Say hello in five words.",
    "Name a colour and a fruit.",
    "What is two plus three?",
    "Give me a short greeting for a friend.",
    "Write one sentence about the sea.",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: {what} not reached within {timeout_s:.0f} s")
        time.sleep(0.5)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Tally:
    """What the clients saw, shared by the client threads."""

    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    ttft_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    answered: int = 0  # completion calls the gateway answered with any HTTP status
    acknowledged: int = 0  # feedback calls answered 200
    skipped: int = 0  # due while --max-in-flight operations were running
    recent_ids: deque[str] = field(default_factory=lambda: deque(maxlen=500))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, kind: str, started: float) -> None:
        with self.lock:
            self.latencies_ms.setdefault(kind, []).append((time.perf_counter() - started) * 1000)

    def error(self, kind: str, what: str) -> None:
        with self.lock:
            self.errors[f"{kind}: {what}"] += 1


class Traffic:
    """The four kinds of operation, against one gateway and one database."""

    def __init__(self, gateway: str, engine: Engine, max_tokens: int, tally: Tally) -> None:
        self.gateway = gateway
        self.engine = engine
        self.max_tokens = max_tokens
        self.tally = tally
        self.client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=256))
        self.votes = 0
        self.lock = threading.Lock()

    def _body(self, stream: bool) -> dict[str, Any]:
        prompt = random.choice(PROMPTS)
        return {"model": ALIAS, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_tokens, "temperature": 0.7, "stream": stream}  # fmt: skip

    def _refused(self, kind: str, response: httpx.Response) -> None:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = "?"
        self.tally.error(kind, f"HTTP {response.status_code} {code}")

    def chat(self) -> None:
        started = time.perf_counter()
        try:
            response = self.client.post(
                f"{self.gateway}/v1/chat/completions", json=self._body(False)
            )
        except httpx.HTTPError as exc:
            self.tally.error("chat", type(exc).__name__)
            return
        with self.tally.lock:
            self.tally.answered += 1
        if response.status_code != 200:
            self._refused("chat", response)
            return
        self.tally.recent_ids.append(response.json()["id"])
        self.tally.ok("chat", started)

    def stream(self) -> None:
        started = time.perf_counter()
        first: float | None = None
        response_id = None
        try:
            url = f"{self.gateway}/v1/chat/completions"
            with self.client.stream("POST", url, json=self._body(True)) as response:
                with self.tally.lock:
                    self.tally.answered += 1
                if response.status_code != 200:
                    response.read()
                    self._refused("stream", response)
                    return
                last_line = ""
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    last_line = line
                    if line.startswith("data: {"):
                        event = json.loads(line[6:])
                        if "error" in event:
                            self.tally.error("stream", f"error event {event['error'].get('code')}")
                            return
                        response_id = response_id or event.get("id")
                        if first is None:
                            first = time.perf_counter()
        except httpx.HTTPError as exc:
            self.tally.error("stream", type(exc).__name__)
            return
        if last_line != "data: [DONE]":
            self.tally.error("stream", "ended without [DONE]")
            return
        if first is not None:
            with self.tally.lock:
                self.tally.ttft_ms.append((first - started) * 1000)
        if response_id:
            self.tally.recent_ids.append(response_id)
        self.tally.ok("stream", started)

    def feedback(self) -> None:
        if not self.tally.recent_ids:
            self.chat()
            return
        response_id = random.choice(list(self.tally.recent_ids))
        with self.lock:
            self.votes += 1
            user = f"soak-user-{self.votes}"
        body = {"response_id": response_id, "rating": random.choice((1, -1)), "user": user}
        started = time.perf_counter()
        try:
            response = self.client.post(f"{self.gateway}/v1/feedback", json=body)
        except httpx.HTTPError as exc:
            self.tally.error("feedback", type(exc).__name__)
            return
        if response.status_code != 200:
            self._refused("feedback", response)
            return
        with self.tally.lock:
            self.tally.acknowledged += 1
        self.tally.ok("feedback", started)

    def analytics(self) -> None:
        query = random.choice((latency_series, traffic_series, engagement_series))
        started = time.perf_counter()
        try:
            if random.random() < 0.25:
                fleet_summary(self.engine)
            else:
                query(self.engine, last(timedelta(hours=1)))
        except Exception as exc:  # a failed dashboard query is a result here, not a crash
            self.tally.error("analytics", type(exc).__name__)
            return
        self.tally.ok("analytics", started)

    def run(self, kind: str) -> None:
        getattr(self, kind)()


def role(process: psutil.Process) -> str:
    """What a Herd process is: its `herd` sub-command, the dashboard, or PostgreSQL."""
    try:
        argv = process.cmdline()
    except psutil.Error:
        return "gone"
    if "app.cli" in argv and argv.index("app.cli") + 1 < len(argv):
        command = argv[argv.index("app.cli") + 1]
        return "herd up" if command == "up" else command
    if any("streamlit" in a for a in argv):
        return "dashboard"
    return "postgres" if process.name().startswith("postgres") else process.name()


def herd_processes(root: int, pgdata: Path) -> dict[str, psutil.Process]:
    """herd up and its descendants, plus the PostgreSQL postmaster, keyed by role (and pid
    where a role has several)."""
    found: list[psutil.Process] = []
    try:
        top = psutil.Process(root)
        found = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    pid_file = pgdata / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(psutil.NoSuchProcess, ValueError, IndexError):
            found.append(psutil.Process(int(pid_file.read_text().split()[0])))
    named: dict[str, psutil.Process] = {}
    for process in found:
        name = role(process)
        if name == "postgres" and process.pid != found[-1].pid:
            continue  # backends come and go with pooled connections; the postmaster stays
        named[f"{name} ({process.pid})" if name == "worker" else name] = process
    return named


class MemorySampler:
    """RSS of every Herd process every period_s, in MiB, with the time of the sample."""

    def __init__(self, root: int, pgdata: Path, period_s: float) -> None:
        self.root, self.pgdata, self.period_s = root, pgdata, period_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        rss = {}
        for name, process in herd_processes(self.root, self.pgdata).items():
            with contextlib.suppress(psutil.Error):
                rss[name] = process.memory_info().rss / 2**20
        self.samples.append((time.monotonic(), rss))

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def summary(self, steady_from: float) -> dict[str, dict[str, float]]:
        """Per process: RSS at start, middle and end of the steady part (after warm-up),
        and the least-squares slope in MiB per hour."""
        steady = [(t, s) for t, s in self.samples if t >= steady_from] or self.samples
        names = sorted({n for _, s in steady for n in s})
        result = {}
        for name in names:
            points = [(t, s[name]) for t, s in steady if name in s]
            if len(points) < 2:
                continue
            times = [t - points[0][0] for t, _ in points]
            values = [v for _, v in points]
            slope = (
                statistics.linear_regression(times, values).slope if len(set(times)) > 1 else 0.0
            )
            result[name] = {
                "start_mib": round(values[0], 1),
                "middle_mib": round(values[len(values) // 2], 1),
                "end_mib": round(values[-1], 1),
                "slope_mib_per_h": round(slope * 3600, 2),
                "samples": len(values),
            }
        return result


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        requests = conn.execute(text("SELECT count(*) FROM requests")).scalar_one()
        feedback = conn.execute(text("SELECT count(*) FROM feedback")).scalar_one()
    return int(requests), int(feedback)


def start_herd(home: Path, ports: dict[str, int], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}
    env.update({
        "HERD_HOME": str(home), "HERD_MODELS_DIR": str(home / "models"),
        "HERD_GATEWAY_HOST": LOOPBACK, "HERD_GATEWAY_PORT": str(ports["gateway"]),
        "HERD_DASHBOARD_HOST": LOOPBACK, "HERD_DASHBOARD_PORT": str(ports["dashboard"]),
        "HERD_SUPERVISOR_HOST": LOOPBACK, "HERD_SUPERVISOR_PORT": str(ports["supervisor"]),
        "HERD_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up", "--demo"],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def deploy_demo(engine: Engine, models_dir: Path, parallel: int) -> str:
    """The demo model under ALIAS (created once per HERD_HOME); the model's name."""
    demo = next(
        m.name for m in ModelStore(engine, models_dir).list()
        if m.name.startswith("SmolLM2") and m.status == "valid"
    )  # fmt: skip
    deployments = Deployments(engine)
    if not any(d.alias == ALIAS for d in deployments.all()):
        deployments.create(ALIAS, ServingSettings(model=demo, n_ctx=2048, parallel=parallel))
    return demo


def live_workers(gateway: str) -> int:
    try:
        models = httpx.get(f"{gateway}/v1/models", timeout=5).json()["data"]
    except (httpx.HTTPError, KeyError, ValueError):
        return 0
    return sum(m["live_workers"] for m in models if m["id"] == ALIAS)


def drained(gateway: str) -> bool:
    health = httpx.get(f"{gateway}/health", timeout=5).json()
    return bool(health["log_pending_rows"] + health["log_spooled_rows"] == 0)


def drive(traffic: Traffic, tally: Tally, args: argparse.Namespace) -> float:
    """Open loop: an operation every 1/rate s for duration s; the seconds it took."""
    kinds, weights = list(MIX), list(MIX.values())
    in_flight = threading.Semaphore(args.max_in_flight)
    started = time.monotonic()

    def one(kind: str) -> None:
        try:
            traffic.run(kind)
        finally:
            in_flight.release()

    with ThreadPoolExecutor(max_workers=args.max_in_flight) as pool:
        for k in range(int(args.duration * args.rate)):
            delay = started + k / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            kind = random.choices(kinds, weights)[0]
            if not in_flight.acquire(blocking=False):
                with tally.lock:
                    tally.skipped += 1
                continue
            pool.submit(one, kind)
    return time.monotonic() - started


def report(result: dict[str, Any]) -> str:
    lines = [
        f"duration {result['duration_s']:.0f} s at {result['rate']} ops/s offered "
        f"(mix {result['mix']}), max in flight {result['max_in_flight']}",
        f"completions answered: {result['answered']} ({result['completions_per_s']:.2f}/s); "
        f"all operations done: {result['operations_per_s']:.2f}/s; skipped at the bound: "
        f"{result['skipped']}",
        "latency ms (p50 / p99 / n):",
    ]
    for kind, lat in result["latency_ms"].items():
        lines.append(f"  {kind:10} {lat['p50']:8.1f} / {lat['p99']:8.1f} / {lat['n']}")
    if result["stream_ttft_ms"]:
        ttft = result["stream_ttft_ms"]
        lines.append(f"  stream TTFT {ttft['p50']:7.1f} / {ttft['p99']:8.1f}")
    lines.append(f"errors by kind: {dict(result['errors']) or 'none'}")
    rec = result["reconciliation"]
    lines.append(
        f"reconciliation: requests rows +{rec['requests_rows']} vs answered {rec['answered']}; "
        f"feedback rows +{rec['feedback_rows']} vs acknowledged {rec['acknowledged']}: "
        f"{'OK' if rec['ok'] else 'MISMATCH'}"
    )
    lines.append("RSS MiB (start / middle / end of the steady part, slope MiB/h):")
    for name, mem in result["memory"].items():
        lines.append(
            f"  {name:22} {mem['start_mib']:7.1f} / {mem['middle_mib']:7.1f} / "
            f"{mem['end_mib']:7.1f}   {mem['slope_mib_per_h']:+8.2f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    random.seed(args.seed)
    home = args.home.resolve()
    if args.fresh and home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("gateway", "dashboard", "supervisor")}
    gateway = f"http://{LOOPBACK}:{ports['gateway']}"
    herd = start_herd(home, ports, home / "herd-up.log")
    database = None
    try:
        wait_until(lambda: herd.poll() is None and _answers(f"{gateway}/health"), "gateway up")
        settings = Settings(home=home, models_dir=home / "models")
        database = Database.open(settings)  # attaches to the server herd up started
        demo = deploy_demo(database.engine, settings.models_path, args.parallel)
        wait_until(lambda: live_workers(gateway) > 0, "demo worker ready")
        tally = Tally()
        traffic = Traffic(gateway, database.engine, args.max_tokens, tally)
        for _ in range(3):  # warm-up: model pages, connection pools
            traffic.chat()
        tally = Tally()
        traffic.tally = tally
        wait_until(lambda: drained(gateway), "warm-up rows written", 60)
        before = counts(database.engine)
        sampler = MemorySampler(herd.pid, settings.pgdata_dir, args.sample_s)
        sampler.start()
        steady_from = time.monotonic() + min(60.0, args.duration * 0.1)
        elapsed = drive(traffic, tally, args)
        sampler.stop()
        wait_until(lambda: drained(gateway), "request log drained", 60)
        after = counts(database.engine)
        rows = (after[0] - before[0], after[1] - before[1])
        done = sum(len(v) for v in tally.latencies_ms.values())
        result: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()}: {os.cpu_count()} CPUs, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.platform()}",
            "model": demo,
            "duration_s": elapsed,
            "rate": args.rate,
            "mix": MIX,
            "max_in_flight": args.max_in_flight,
            "max_tokens": args.max_tokens,
            "parallel": args.parallel,
            "answered": tally.answered,
            "completions_per_s": tally.answered / elapsed,
            "operations_per_s": done / elapsed,
            "skipped": tally.skipped,
            "latency_ms": {
                kind: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "n": len(v)}
                for kind, v in sorted(tally.latencies_ms.items())
            },
            "stream_ttft_ms": {
                "p50": percentile(tally.ttft_ms, 0.5),
                "p99": percentile(tally.ttft_ms, 0.99),
            }
            if tally.ttft_ms
            else None,
            "errors": dict(tally.errors),
            "reconciliation": {
                "requests_rows": rows[0],
                "answered": tally.answered,
                "feedback_rows": rows[1],
                "acknowledged": tally.acknowledged,
                "ok": rows == (tally.answered, tally.acknowledged),
            },
            "memory": sampler.summary(steady_from),
            "memory_samples": [
                {
                    "t_s": round(t - sampler.samples[0][0], 1),
                    **{k: round(v, 1) for k, v in s.items()},
                }
                for t, s in sampler.samples
            ],
        }
        return result
    finally:
        if database is not None:
            database.close()
        herd.send_signal(signal.SIGINT)  # Ctrl-C: herd up stops everything it started
        try:
            herd.wait(timeout=90)
        except subprocess.TimeoutExpired:
            herd.kill()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (60)")
    parser.add_argument("--rate", type=float, default=2.0, help="operations per second (2)")
    parser.add_argument("--max-in-flight", type=int, default=16, help="concurrent ops bound")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens per chat (16)")
    parser.add_argument("--parallel", type=int, default=4, help="worker sequence slots (4)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period (5)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the mix")
    parser.add_argument("--home", type=Path, default=WORK / "soak-home", help="HERD_HOME")
    parser.add_argument("--fresh", action="store_true", help="delete --home first")
    args = parser.parse_args()
    if not 0 < args.rate <= 200 or not 0 < args.duration <= 24 * 3600:
        parser.error("--rate must be in (0, 200] and --duration in (0, 86400] seconds")
    if args.max_in_flight < 1:
        parser.error("--max-in-flight must be at least 1")
    result = run(args)
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"(full result with every memory sample: {out})")
    sys.exit(0 if result["reconciliation"]["ok"] else 1)


if __name__ == "__main__":
    main()
