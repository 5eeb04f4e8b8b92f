"""What Herd's gateway adds to a call, against a direct call and LiteLLM's proxy.

Three contenders answer the same OpenAI chat request from the same upstream, an nginx that
returns a fixed chat.completion body (far faster than either proxy, so what is measured is
the proxy):

- direct: wrk straight to nginx (the anchor);
- herd: a `herd gateway` process whose database has one alias -> deployment -> model and a
  worker row pointing at nginx, heartbeated by this script; every call writes its request
  row, as in production;
- litellm: LiteLLM's proxy (2 uvicorn workers, master key, no database) from its own
  virtualenv, with one model routed to nginx as an OpenAI-compatible api_base.

Load comes from wrk (closed loop, keep-alive) at each client count; per round the three
contenders run back to back in a rotating order, after a warm-up each. Medians over rounds
are reported, with "added" latency = contender minus direct at the same client count.

    apt-get install -y nginx wrk
    python -m venv bench/.work/litellm-venv
    bench/.work/litellm-venv/bin/pip install 'litellm[proxy]' py-spy
    python bench/gateway_bench.py --rounds 3

Temp files (configs, logs, the embedded PostgreSQL, the profile) go under bench/.work/.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
from app.db import migrate
from app.db.embedded import EmbeddedPostgres
from app.db.engine import make_engine, sqlalchemy_url
from app.store.catalog import ModelStore
from app.worker.registration import WorkerRegistry, WorkerRow

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".work"
NGINX = Path("/usr/sbin/nginx")
DEFAULT_LITELLM = WORK / "litellm-venv" / "bin" / "litellm"
ALIAS = "bench"
MASTER_KEY = "sk-herd-bench"
START_TIMEOUT_S = 120.0
# A worker row advertises this many slots so that the gateway's bounded queue (slots + 16 per
# worker) never turns the 256-client run into 429s: nginx answers any concurrency at once.
STUB_SLOTS = 512
HEARTBEAT_S = 0.5

# Not cacheable (no temperature 0, no seed): every call goes to the upstream.
REQUEST_BODY = {
    "model": ALIAS,
    "messages": [{"role": "user", "content": "Say hello in one word."}],
    "max_tokens": 16,
}
STUB_ANSWER = {
    "id": "chatcmpl-stub",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "stub",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
}

# wrk prints its own --latency report; done() adds one machine-readable line (microseconds).
WRK_LUA = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,' ..
    '"mean_us":%%.1f,"max_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class BenchError(RuntimeError):
    """A prerequisite is missing or a contender would not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode} while starting")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.2)
    raise BenchError(f"{what} not ready within {START_TIMEOUT_S:.0f} s")


@contextmanager
def running(
    argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that is stopped (with every descendant) however the block ends."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd
        )
    try:
        yield process
    finally:
        stop_tree(process)


def stop_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process, then SIGKILL whatever of its tree is left, by pid."""
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=5)
    for child in alive:
        with suppress(psutil.NoSuchProcess):
            child.kill()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and all their live descendants."""
    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


# -- the upstream ------------------------------------------------------------------------------
def nginx_config(folder: Path, port: int) -> Path:
    body = json.dumps(STUB_ANSWER, separators=(",", ":"))
    temp_paths = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = f"""
worker_processes 1;
daemon off;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp_paths}
    # Proxies keep their upstream connections open; nginx must not close them every 1000.
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""
    path = folder / "nginx.conf"
    path.write_text(config)
    return path


# -- Herd's database ---------------------------------------------------------------------------
def tiny_gguf(path: Path) -> Path:
    """A minimal valid GGUF: a deployment needs a model row, and only the store writes those.

    Never loaded (nginx plays the worker), so one small tensor and the header fields suffice.
    """
    import gguf  # the project's dependency; imported here because only setup needs it
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("gateway-bench")
    writer.add_block_count(1)
    writer.add_context_length(4096)
    writer.add_embedding_length(8)
    writer.add_head_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@dataclass
class HerdDatabase:
    url: str
    engine: Engine
    worker_id: int
    row: WorkerRow


def prepare_database(url: str, folder: Path, upstream_url: str, upstream_pid: int) -> HerdDatabase:
    """Schema, one model, one deployment under ALIAS, and a ready worker row for nginx."""
    migrate.upgrade(url)
    engine = make_engine(url)
    gguf = tiny_gguf(folder / "tiny.gguf")
    model = ModelStore(engine, folder / "models").add(gguf)
    deployment = Deployments(engine).create(
        DeploymentRequest(alias=ALIAS, serving=ServingSettings(model=model.name))
    )
    row = WorkerRow(
        host="127.0.0.1",
        url=upstream_url,
        pid=upstream_pid,
        state="ready",
        alias=ALIAS,
        deployment_id=deployment.id,
        model_id=model.id,
        slots_total=STUB_SLOTS,
        slots_busy=0,
        queue_length=0,
    )
    worker_id = WorkerRegistry(engine).insert(row)
    return HerdDatabase(url=url, engine=engine, worker_id=worker_id, row=row)


@contextmanager
def heartbeating(db: HerdDatabase) -> Iterator[None]:
    """Keep the worker row fresh, as a real worker would, so the gateway keeps routing to it."""
    stop = threading.Event()
    registry = WorkerRegistry(db.engine)

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                registry.update(db.worker_id, db.row)
            except Exception as exc:  # a missed beat must not end the beats
                print(f"heartbeat failed: {exc}", file=sys.stderr)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    name = f"herd_gwbench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(sqlalchemy_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def postmaster_pid(pgdata: Path) -> int | None:
    pid_file = pgdata / "postmaster.pid"
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# -- load --------------------------------------------------------------------------------------
@dataclass
class Contender:
    name: str
    url: str  # the chat completions endpoint
    # Whose CPU counts as this contender's, by part (the upstream's does not count).
    cpu_groups: dict[str, list[int]]


@dataclass(frozen=True)
class Sample:
    contender: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    cpu_us_by_group: dict[str, float]

    @property
    def cpu_us_per_request(self) -> float:
        return sum(self.cpu_us_by_group.values())


def wrk(script: Path, url: str, clients: int, duration_s: float) -> dict[str, float]:
    threads = min(2, clients)
    argv = [
        "wrk", "-t", str(threads), "-c", str(clients), "-d", f"{duration_s:g}s",
        # A slow proxy at 256 clients answers in seconds; wrk's default 2 s would drop those.
        "--timeout", "60s", "--latency", "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 120)
    match = re.search(r"^WRK_JSON (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise BenchError(
            f"wrk failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    result: dict[str, float] = json.loads(match.group(1))
    return result


def measure(contender: Contender, script: Path, clients: int, args: argparse.Namespace) -> Sample:
    wrk(script, contender.url, clients, args.warmup)
    groups = contender.cpu_groups
    cpu_before = {group: cpu_seconds(pids) for group, pids in groups.items()}
    stats = wrk(script, contender.url, clients, args.duration)
    cpu = {group: cpu_seconds(pids) - cpu_before[group] for group, pids in groups.items()}
    requests = max(1, int(stats["requests"]))
    return Sample(
        contender=contender.name,
        clients=clients,
        rps=stats["requests"] / (stats["duration_us"] / 1e6),
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        errors=int(stats["connect"] + stats["read"] + stats["write"] + stats["timeout"]),
        non_2xx=int(stats["status"]),
        cpu_us_by_group={group: seconds * 1e6 / requests for group, seconds in cpu.items()},
    )


def check_answer(contender: Contender) -> None:
    """One call by hand: the contender must really answer a completion before we time it."""
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    response = httpx.post(contender.url, json=REQUEST_BODY, headers=headers, timeout=60)
    if response.status_code != 200 or "choices" not in response.json():
        raise BenchError(f"{contender.name} answered {response.status_code}: {response.text[:500]}")


# -- the contenders ----------------------------------------------------------------------------
@dataclass
class Stand:
    """Everything started for one run: the contenders and what the report needs of them."""

    contenders: list[Contender]
    processes: dict[str, subprocess.Popen[bytes]]
    db: HerdDatabase


def start_nginx(stack: ExitStack, folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    prefix = folder / "nginx"
    prefix.mkdir()
    conf = nginx_config(prefix, port)
    argv = [str(NGINX), "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    nginx = stack.enter_context(running(argv, folder / "nginx.log"))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url, timeout=2).status_code == 200, "nginx", nginx)
    return url, nginx


def start_herd(
    stack: ExitStack, folder: Path, upstream: str, upstream_pid: int
) -> tuple[str, subprocess.Popen[bytes], HerdDatabase, int | None, dict[str, str]]:
    """The gateway as `herd up` runs it, on its own embedded PostgreSQL under bench/.work."""
    pgdata = WORK / "herd-home" / "pgdata"
    embedded = EmbeddedPostgres(pgdata)
    server_url = embedded.start()
    stack.callback(embedded.release)
    db_url = stack.enter_context(fresh_database(server_url))
    db = prepare_database(db_url, folder, upstream, upstream_pid)
    stack.callback(db.engine.dispose)
    stack.enter_context(heartbeating(db))
    env = {**os.environ, "HERD_DATABASE_URL": db_url, "HERD_HOME": str(folder / "herd-home")}
    base, gateway = start_gateway(stack, folder, env)
    return base, gateway, db, postmaster_pid(pgdata), env


def start_gateway(
    stack: ExitStack, folder: Path, env: dict[str, str], name: str = "gateway", tree: Path = REPO
) -> tuple[str, subprocess.Popen[bytes]]:
    """`herd gateway` on a free loopback port, once it routes to its one live worker; tree:
    the source tree it runs from (another checkout of Herd, to compare two versions)."""
    port = free_port()
    argv = [sys.executable, "-m", "app.cli", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    if tree != REPO:
        env = {**env, "PYTHONPATH": str(tree)}
    gateway = stack.enter_context(running(argv, folder / f"{name}.log", env, cwd=tree))
    base = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: httpx.get(f"{base}/health", timeout=2).json()["live_workers"] == 1,
        "herd gateway",
        gateway,
    )
    return base, gateway


def start_litellm(
    stack: ExitStack, folder: Path, litellm: Path, upstream: str
) -> tuple[str, subprocess.Popen[bytes]]:
    """LiteLLM's proxy: 2 workers, a master key, no database, one model routed to nginx."""
    config = {
        "model_list": [
            {
                "model_name": ALIAS,
                "litellm_params": {
                    "model": f"openai/{ALIAS}",
                    "api_base": f"{upstream}/v1",
                    "api_key": "sk-stub",
                },
            }
        ],
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    path = folder / "litellm.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML: no yaml writer needed
    # Neither Herd's settings nor a DATABASE_URL may leak in: LiteLLM runs without a database.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_") and k != "DATABASE_URL"}
    env |= {
        "LITELLM_MASTER_KEY": MASTER_KEY,
        # This machine is offline: use the bundled price map instead of fetching it.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    port = free_port()
    # Its workers start by importing LiteLLM (several seconds on a busy machine): uvicorn's
    # 5 s worker health check would kill and respawn them forever.
    argv = [str(litellm), "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "2", "--timeout_worker_healthcheck", "120"]  # fmt: skip
    proxy = stack.enter_context(running(argv, folder / "litellm.log", env))
    base = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: httpx.get(f"{base}/health/liveliness", timeout=2).status_code == 200,
        "litellm proxy",
        proxy,
    )
    return base, proxy


def start_stand(stack: ExitStack, folder: Path, args: argparse.Namespace) -> Stand:
    path = "/v1/chat/completions"
    upstream, nginx = start_nginx(stack, folder)
    herd_base, gateway, db, pg_pid, env = start_herd(stack, folder, upstream, nginx.pid)
    contenders = [
        Contender("direct", upstream + path, {"nginx": [nginx.pid]}),
        # The request log's writes are part of the gateway's cost: count PostgreSQL too.
        Contender(
            "herd",
            herd_base + path,
            {"gateway": [gateway.pid], "postgres": [pg_pid] if pg_pid else []},
        ),
    ]
    processes = {"herd": gateway}
    if args.base_tree:
        # The same gateway from another source tree (an earlier commit), on the same database
        # and upstream: a before/after comparison within one run.
        tree = Path(args.base_tree).resolve()
        old_base, old = start_gateway(stack, folder, env, name="gateway-base", tree=tree)
        pg = [pg_pid] if pg_pid else []
        contenders.append(
            Contender("herd-base", old_base + path, {"gateway": [old.pid], "postgres": pg})
        )
        processes["herd-base"] = old
    if "litellm" in args.contenders:
        litellm_base, proxy = start_litellm(stack, folder, Path(args.litellm), upstream)
        contenders.append(Contender("litellm", litellm_base + path, {"litellm": [proxy.pid]}))
        processes["litellm"] = proxy
    for contender in contenders:
        check_answer(contender)
    return Stand(contenders, processes, db)


def request_rows(db: HerdDatabase) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM requests")).scalar_one())


# -- the report --------------------------------------------------------------------------------
def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def median_samples(samples: list[Sample]) -> Sample:
    first = samples[0]
    return Sample(
        contender=first.contender,
        clients=first.clients,
        rps=statistics.median(s.rps for s in samples),
        p50_ms=statistics.median(s.p50_ms for s in samples),
        p99_ms=statistics.median(s.p99_ms for s in samples),
        errors=sum(s.errors for s in samples),
        non_2xx=sum(s.non_2xx for s in samples),
        cpu_us_by_group={
            group: statistics.median(s.cpu_us_by_group[group] for s in samples)
            for group in first.cpu_us_by_group
        },
    )


Results = dict[tuple[str, int], Sample]


def table(results: Results, names: list[str], levels: list[int]) -> str:
    lines = [
        "| clients | contender | requests/s | x direct rps | p50 ms | p99 ms | added p50 ms "
        "| added p99 ms | CPU µs/req | errors / non-2xx |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for clients in levels:
        direct = results[("direct", clients)]
        for name in names:
            s = results[(name, clients)]
            added = "—" if name == "direct" else f"{s.p50_ms - direct.p50_ms:+.3f}"
            added99 = "—" if name == "direct" else f"{s.p99_ms - direct.p99_ms:+.3f}"
            lines.append(
                f"| {clients} | {name} | {s.rps:,.0f} | {ratio(s.rps, direct.rps):.4f} | "
                f"{s.p50_ms:.3f} | {s.p99_ms:.3f} | {added} | {added99} | "
                f"{s.cpu_us_per_request:,.0f} | {s.errors} / {s.non_2xx} |"
            )
    return "\n".join(lines)


def paired(
    samples: dict[tuple[str, int], list[Sample]],
    a: str,
    b: str,
    clients: int,
    value: Callable[[Sample], float],
) -> tuple[float, float]:
    """a's value over b's at one client count: the ratio of the medians, and the median of
    the per-round ratios (rounds pair up by index: one round runs every contender)."""
    xs, ys = samples[(a, clients)], samples[(b, clients)]
    of_medians = ratio(statistics.median(map(value, xs)), statistics.median(map(value, ys)))
    of_rounds = statistics.median(ratio(value(x), value(y)) for x, y in zip(xs, ys, strict=True))
    return of_medians, of_rounds


def _rps(s: Sample) -> float:
    return s.rps


def _gateway_us(s: Sample) -> float:
    return s.cpu_us_by_group.get("gateway", s.cpu_us_per_request)


def verdicts(
    samples: dict[tuple[str, int], list[Sample]], names: list[str], levels: list[int]
) -> list[str]:
    """Issue 23's gateway targets, each by the ratio of the medians and the median of the
    per-round ratios ("met" only when both meet it); then each client count's CPU."""
    results = {key: median_samples(group) for key, group in samples.items()}
    lines = []
    if 32 in levels and "litellm" in names:
        medians, rounds = paired(samples, "herd", "litellm", 32, _rps)
        met = "met" if min(medians, rounds) >= 20 else "missed"
        lines.append(
            f"- Herd rps / LiteLLM rps at 32 clients: **{medians:.1f}x** (ratio of medians; "
            f"median of per-round ratios {rounds:.1f}x); target >= 20x: **{met}**"
        )
    if 32 in levels:
        cpu = results[("herd", 32)].cpu_us_by_group.get("gateway", float("nan"))
        met = "met" if cpu <= 250 else "missed"
        lines.append(
            f"- Gateway CPU per call at 32 clients: **{cpu:,.0f} µs** (median of rounds); "
            f"target <= 250 µs: **{met}**"
        )
    if 1 in levels:
        added = [
            h.p50_ms - d.p50_ms
            for h, d in zip(samples[("herd", 1)], samples[("direct", 1)], strict=True)
        ]
        of_medians = results[("herd", 1)].p50_ms - results[("direct", 1)].p50_ms
        of_rounds = statistics.median(added)
        met = "met" if max(of_medians, of_rounds) < 0.3 else "missed"
        lines.append(
            f"- Herd added p50 at 1 client: **{of_medians:.3f} ms** (difference of medians; "
            f"median of per-round differences {of_rounds:.3f} ms); target < 0.3 ms: **{met}**"
        )
    for clients in levels:
        herd = results[("herd", clients)]
        parts = ", ".join(f"{g} {us:,.0f}" for g, us in herd.cpu_us_by_group.items())
        line = (
            f"- {clients} clients: Herd CPU per request {herd.cpu_us_per_request:,.0f} µs ({parts})"
        )
        if "litellm" in names:
            lite = results[("litellm", clients)]
            line += (
                f"; LiteLLM {lite.cpu_us_per_request:,.0f} µs; "
                f"Herd/LiteLLM rps {ratio(herd.rps, lite.rps):.1f}x"
            )
        if "herd-base" in names:
            rps = paired(samples, "herd", "herd-base", clients, _rps)
            gw = paired(samples, "herd", "herd-base", clients, _gateway_us)
            line += (
                f"; herd/herd-base rps {rps[0]:.2f}x (median of rounds {rps[1]:.2f}x), "
                f"gateway CPU {gw[0]:.2f}x ({gw[1]:.2f}x)"
            )
        lines.append(line)
    return lines


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    ram_gib = psutil.virtual_memory().total / 2**30
    return (
        f"{model.group(1).strip() if model else platform.processor()}, "
        f"{os.cpu_count()} cores, {ram_gib:.1f} GiB RAM, {platform.system()} {platform.release()}"
    )


def versions(litellm: Path | None) -> dict[str, str]:
    def out(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60)
        return (done.stdout + done.stderr).strip()

    commit = out(["git", "rev-parse", "--short", "HEAD"])
    # Read-only: others edit this tree; say when the gateway measured is not the commit.
    dirty = out(["git", "status", "--porcelain", "--", "app"])
    found = {
        "herd": commit + (" (with uncommitted changes under app/)" if dirty else ""),
        "nginx": out([str(NGINX), "-v"]).removeprefix("nginx version: nginx/"),
        "wrk": out(["wrk", "-v"]).split()[1],
        "python": platform.python_version(),
    }
    if litellm is not None:
        code = "import importlib.metadata as m; print(m.version('litellm'))"
        found["litellm"] = out([str(litellm.parent / "python"), "-c", code])
    return found


# -- profile -----------------------------------------------------------------------------------
def find_py_spy(litellm: Path) -> Path | None:
    found = shutil.which("py-spy")
    if found:
        return Path(found)
    beside = litellm.parent / "py-spy"
    return beside if beside.exists() else None


def profile_gateway(
    py_spy: Path, pid: int, script: Path, url: str, folder: Path, gil: bool = False
) -> list[str]:
    """py-spy the gateway under 32 clients: a flame graph, and the top frames as text.

    gil: sample only the thread holding the GIL (py-spy --gil), so that a thread waiting
    for it (the event loop while a helper thread runs Python) is not counted as working."""
    seconds = 10
    svg, raw = WORK / "gateway.svg", folder / "gateway.collapsed"
    load = subprocess.Popen(
        ["wrk", "-t", "2", "-c", "32", "-d", f"{2 * seconds + 10}s", "-s", str(script), url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        # Blocking sampling (the default) slows the gateway a little but keeps stacks whole;
        # throughput is not measured while profiling.
        for fmt, target in (("flamegraph", svg), ("raw", raw)):
            subprocess.run(
                [str(py_spy), "record", "-d", str(seconds), "-f", fmt,
                 "-o", str(target), "--pid", str(pid), *(["--gil"] if gil else [])],
                check=True, capture_output=True, timeout=seconds + 60,
            )  # fmt: skip
    finally:
        stop_tree(load)
    # By function, not by line; the event loop thread (the one serving requests) apart from
    # helper threads (thread pools, the request log writer), whose waits py-spy may count.
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = loop = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        total += count
        if not frames[0].startswith("_run_module_as_main"):
            continue
        loop += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    loop = max(1, loop)
    lines = [
        f"py-spy ({seconds} s, 32 clients{', --gil' if gil else ''}): {total} samples, "
        f"{loop} on the event loop thread "
        f"({100 * loop / max(1, total):.0f}%), the rest in helper threads. Flame graph: {svg}",
        "Event loop thread, own time by function (top 15):",
    ]
    lines += [f"  {100 * n / loop:5.1f}%  {frame}" for frame, n in own.most_common(15)]
    # Frames in nearly every sample (the event loop, uvicorn, the middleware chain) say
    # nothing about where the time goes; list what lies below them.
    below = [(f, n) for f, n in inclusive.most_common() if n < 0.6 * loop][:30]
    lines.append("Event loop thread, inclusive time by function, under 60% (top 30):")
    lines += [f"  {100 * n / loop:5.1f}%  {frame}" for frame, n in below]
    return lines


# -- the run -----------------------------------------------------------------------------------
def check_prerequisites(args: argparse.Namespace) -> None:
    missing = []
    if not NGINX.exists():
        missing.append("nginx: apt-get update && apt-get install -y nginx")
    if shutil.which("wrk") is None:
        missing.append("wrk: apt-get update && apt-get install -y wrk")
    litellm = Path(args.litellm)
    if "litellm" in args.contenders and not litellm.exists():
        missing.append(
            "LiteLLM in its own virtualenv (it pins many packages; never the project's): "
            f"python -m venv {litellm.parent.parent} && "
            f"{litellm.parent / 'pip'} install 'litellm[proxy]' py-spy"
        )
    if missing:
        raise BenchError("missing:\n  " + "\n  ".join(missing))


def run(args: argparse.Namespace) -> None:
    check_prerequisites(args)
    folder = WORK / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    folder.mkdir(parents=True)
    levels = [int(c) for c in args.clients.split(",")]
    started_at = datetime.now(UTC)
    load_before = os.getloadavg()
    samples: dict[tuple[str, int], list[Sample]] = collections.defaultdict(list)
    profile: list[str] = []

    with ExitStack() as stack:
        stand = start_stand(stack, folder, args)
        script = folder / "post.lua"
        script.write_text(WRK_LUA % {"body": json.dumps(REQUEST_BODY), "key": MASTER_KEY})
        rows_before = request_rows(stand.db)
        herd_calls = 0
        count = len(stand.contenders)
        for round_no in range(args.rounds):
            # Rotate the order each round, so no contender always runs on a warmer machine.
            turn = round_no % count
            order = stand.contenders[turn:] + stand.contenders[:turn]
            for clients in levels:
                for contender in order:
                    s = measure(contender, script, clients, args)
                    samples[(contender.name, clients)].append(s)
                    if contender.name == "herd":
                        herd_calls += round(s.rps * args.duration)
                    print(
                        f"round {round_no + 1}/{args.rounds} clients {clients:>3} "
                        f"{contender.name:>7}: {s.rps:>9,.0f} req/s  p50 {s.p50_ms:8.3f} ms"
                        f"  p99 {s.p99_ms:8.3f} ms  errors {s.errors}/{s.non_2xx}"
                        f"  CPU {s.cpu_us_per_request:,.0f} µs/req",
                        flush=True,
                    )
                for name, process in stand.processes.items():
                    if process.poll() is not None:
                        raise BenchError(f"{name} exited during the run; see {folder}")
        # Every call must have left its request row: give the last batch time to flush.
        time.sleep(2)
        rows = request_rows(stand.db) - rows_before

        py_spy = find_py_spy(Path(args.litellm))
        if args.profile and py_spy is not None:
            herd = stand.contenders[1]
            pid = stand.processes["herd"].pid
            try:
                profile = profile_gateway(
                    py_spy, pid, script, herd.url, folder, gil=args.profile_gil
                )
            except (subprocess.SubprocessError, OSError) as exc:
                profile = [f"py-spy failed: {exc}"]
        elif args.profile:
            profile = ["py-spy not found: pip install py-spy (in any virtualenv) to profile"]
        names = [c.name for c in stand.contenders]
    load_after = os.getloadavg()
    info = versions(Path(args.litellm) if "litellm" in names else None)

    results = {key: median_samples(group) for key, group in samples.items()}
    command = " ".join(["python bench/gateway_bench.py", *sys.argv[1:]])
    software = ", ".join(f"{name} {version}" for name, version in info.items())
    litellm_setup = (
        "LiteLLM: `litellm --config ... --num_workers 2`, master key, no database. "
        if "litellm" in names
        else ""
    )
    paragraphs = [
        f"Command: `{command}`",
        f"Date: {started_at:%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine()}. Shared: other engineers' test suites were running at the same "
        f"time (load average {load_before[0]:.2f} before, {load_after[0]:.2f} after), so read "
        "the ratios within this run, not the absolute numbers.",
        f"Versions: {software}.",
        "Upstream: nginx (1 worker process, access log off) returning a fixed chat.completion "
        "JSON. Herd: `herd gateway`, one alias -> deployment -> model, one worker row pointing "
        f"at nginx (heartbeated every {HEARTBEAT_S} s, {STUB_SLOTS} slots), request log on: "
        f"{rows:,} request rows written for about {herd_calls:,} timed calls plus warm-ups. "
        f"{litellm_setup}Load: wrk, POST JSON with a Bearer header, min(2, clients) threads, "
        f"{args.warmup:g} s warm-up then {args.duration:g} s per measurement; contenders back "
        f"to back per client count, order rotated per round; median of {args.rounds} round(s). "
        "Added = contender minus direct at the same client count. CPU µs/req: the contender's "
        "own processes (Herd: gateway + PostgreSQL; LiteLLM: all its processes; direct: "
        "nginx), not wrk's.",
    ]
    if "herd-base" in names:
        paragraphs[-1] += (
            f" herd-base: the same `herd gateway` run from {args.base_tree} (an earlier "
            "version), on the same database and upstream, measured in the same rotation."
        )
    # Short lines, like the rest of RESULTS.md: the facts of the run, then how it was set up.
    wrapped = [textwrap.fill(p, width=92, break_on_hyphens=False) for p in paragraphs]
    prose = "\n".join(wrapped[:-1]) + "\n\n" + wrapped[-1]
    section = (
        "\n## Gateway overhead: direct vs Herd vs LiteLLM (bench/gateway_bench.py)\n\n"
        f"{prose}\n\n{table(results, names, levels)}\n\n"
        + "\n".join(verdicts(samples, names, levels))
        + "\n"
    )
    if profile:
        section += "\n```\n" + "\n".join(profile) + "\n```\n"
    print(section)
    if args.record:
        with (REPO / "bench" / "RESULTS.md").open("a") as out:
            out.write(section)
        print("appended to bench/RESULTS.md")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--clients", default="1,32,256", help="comma-separated connection counts")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each")
    parser.add_argument("--rounds", type=int, default=3, help="repeats; medians are reported")
    parser.add_argument(
        "--contenders",
        default="direct,herd,litellm",
        help="direct and herd always run; leave litellm out for a quick look at Herd alone",
    )
    parser.add_argument("--litellm", default=str(DEFAULT_LITELLM), help="the litellm executable")
    parser.add_argument(
        "--base-tree",
        help="also run `herd gateway` from this source tree (e.g. `git archive` of an earlier "
        "commit) as contender herd-base, for a before/after comparison in one run",
    )
    parser.add_argument("--profile-gil", action="store_true",
                        help="profile only the thread holding the GIL (py-spy --gil)")  # fmt: skip
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip py-spy on the gateway")  # fmt: skip
    parser.add_argument("--no-record", dest="record", action="store_false",
                        help="print only; do not append to bench/RESULTS.md")  # fmt: skip
    args = parser.parse_args()
    args.contenders = set(args.contenders.split(","))
    try:
        run(args)
    except BenchError as exc:
        sys.exit(f"gateway_bench: {exc}")


if __name__ == "__main__":
    main()
