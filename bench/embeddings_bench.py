"""Embeddings benchmark: a `herd worker --embeddings` vs llama-server's /v1/embeddings on the
same GGUF, side by side in one run; then the semantic cache's lookup latency at scale.

    PYTHONPATH=. python bench/embeddings_bench.py --llama-server /work/anchors/bin/llama-server \
        --threads 2 --batch 32 --requests 20 --repeat 3 --cache-entries 100000

Throughput: `--requests` calls of `--batch` different sentences each, one after another (a
client indexing documents), inputs per second, `--repeat` runs per server, alternating (the
order swapped every run); both servers pool by mean, tokens per decode `--n-ctx`, `--threads`
threads. Herd / llama-server is reported as the ratio of the medians and the median of the
per-run ratios with their spread (bench/ratios.py); the target (>= 0.9x) is met only when
both meet it over at least 3 runs of at least 10 calls each.

Semantic cache: `--cache-entries` random unit vectors of the model's size in one scope of
`semantic_cache` (pgvector HNSW index, embedded PostgreSQL), then `--lookups` lookups of
vectors near stored ones through VectorStore.nearest (what a gateway does per call, SQL round
trip included); p50/p95 in ms, and the share that found the right entry.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import numpy as np
from engine_bench import HERD_FLASH_ATTN, repack_allowed
from ratios import MIN_ROUNDS, headline, paired

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
ALIAS = "embed-bench"
TARGET = 0.9  # Herd's inputs/s over llama-server's
# Fewer calls than this per run are too few to judge a run by (one slow call swings it).
MIN_CALLS_PER_RUN = 10
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
    "boxing",
    "matches",
    "near",
    "an",
    "old",
    "river",
    "bank",
    "where",
    "children",
    "sell",
    "fresh",
    "bread",
    "and",
    "cold",
    "lemonade",
]


def sentences(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(12, 24)))) for _ in range(count)]


def wait_ready(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready")


@contextmanager
def herd_worker(args: argparse.Namespace, stack: ExitStack) -> Iterator[tuple[str, str]]:
    """A `herd worker --embeddings` on a fresh database; yields (worker URL, database URL)."""
    from gateway_bench import WORK, free_port, fresh_database, running

    from app.control.deployments import DeploymentRequest, Deployments, ServingSettings
    from app.db import migrate
    from app.db.embedded import EmbeddedPostgres
    from app.db.engine import make_engine as make_db_engine
    from app.store.catalog import ModelStore

    folder = WORK / f"embeddings-{time.strftime('%Y%m%dT%H%M%S')}"
    folder.mkdir(parents=True)
    embedded = EmbeddedPostgres(WORK / "herd-home" / "pgdata")
    stack.callback(embedded.release)
    db_url = stack.enter_context(fresh_database(embedded.start()))
    migrate.upgrade(db_url)
    db = make_db_engine(db_url)
    stack.callback(db.dispose)
    model = ModelStore(db, folder / "models").add(Path(args.model))
    serving = ServingSettings(
        model=model.name, n_ctx=args.n_ctx, threads=args.threads, embeddings=True,
        pooling="mean",
    )  # fmt: skip
    deployment = Deployments(db).create(DeploymentRequest(alias=ALIAS, serving=serving))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HERD_DATABASE_URL": db_url,
        "HERD_HOME": str(folder / "herd-home"),
        "HERD_MODELS_DIR": str(folder / "models"),
    }
    port = free_port()
    argv = [sys.executable, "-m", "app.cli", "worker", "--model", model.name, "--port", str(port)]
    argv += ["--alias", ALIAS, "--deployment-id", str(deployment.id), "--embeddings"]
    argv += ["--pooling", "mean", "--n-ctx", str(args.n_ctx), "--threads", str(args.threads)]
    stack.enter_context(running(argv, folder / "worker.log", env))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    yield url, db_url


@contextmanager
def llama_server(args: argparse.Namespace, stack: ExitStack) -> Iterator[str]:
    from gateway_bench import WORK, free_port, running

    port = free_port()
    t, n = str(args.threads), str(args.n_ctx)
    # One slot per input of a batch, so that a batch is decoded together (as Herd does).
    argv = [args.llama_server, "-m", args.model, "--port", str(port), "--embeddings"]
    argv += ["--pooling", "mean", "-t", t, "-tb", t, "-c", n, "-b", n, "-ub", n]
    argv += ["--parallel", str(args.batch), "--kv-unified", "--no-webui"]
    # Herd's settings: its embedding context keeps llama.cpp's default flash attention (auto),
    # and its worker's choice of CPU extra buffers (HERD_CPU_EXTRA_BUFFERS).
    argv += ["-fa", HERD_FLASH_ATTN] + ([] if repack_allowed() else ["--no-repack"])
    WORK.mkdir(parents=True, exist_ok=True)
    stack.enter_context(running(argv, WORK / "llama-server-embeddings.log"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    yield url


async def throughput(url: str, args: argparse.Namespace, seed: int) -> float:
    """Inputs per second over args.requests calls of args.batch inputs."""
    batches = [sentences(args.batch, seed + i) for i in range(args.requests)]
    async with httpx.AsyncClient(timeout=300) as client:
        warm = await client.post(
            f"{url}/v1/embeddings", json={"model": ALIAS, "input": batches[0][:4]}
        )
        warm.raise_for_status()
        started = time.perf_counter()
        for batch in batches:
            r = await client.post(
                f"{url}/v1/embeddings",
                json={"model": ALIAS, "input": batch, "encoding_format": "float"},
            )
            r.raise_for_status()
            assert len(r.json()["data"]) == len(batch)
        return args.batch * args.requests / (time.perf_counter() - started)


def question_latency_ms(url: str, count: int = 30) -> float:
    """p50 of embedding one short question (what a semantic-cache lookup adds first)."""
    times = []
    with httpx.Client(timeout=60) as client:
        for text_in in sentences(count, 7):
            t0 = time.perf_counter()
            client.post(f"{url}/v1/embeddings", json={"model": ALIAS, "input": text_in[:60]})
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def agreement(herd: str, anchor: str) -> float:
    """Mean cosine of the two servers' vectors for the same sentences (same model/pooling)."""
    texts = sentences(8, 99)
    a = httpx.post(f"{herd}/v1/embeddings", json={"model": ALIAS, "input": texts}, timeout=60)
    b = httpx.post(f"{anchor}/v1/embeddings", json={"model": ALIAS, "input": texts}, timeout=60)
    va = np.asarray([d["embedding"] for d in a.json()["data"]])
    vb = np.asarray([d["embedding"] for d in b.json()["data"]])
    va /= np.linalg.norm(va, axis=1, keepdims=True)
    vb /= np.linalg.norm(vb, axis=1, keepdims=True)
    return float(np.mean(np.sum(va * vb, axis=1)))


def cache_latency(db_url: str, dims: int, args: argparse.Namespace) -> dict[str, float]:
    """Fill semantic_cache with args.cache_entries vectors; time nearest-entry lookups."""
    from sqlalchemy import text

    from app.db.engine import make_engine as make_db_engine
    from app.gateway.vector_store import VectorStore

    engine = make_db_engine(db_url)
    store = VectorStore(engine)
    assert store.status() is None, "pgvector unavailable"
    rng = np.random.default_rng(1)
    chunk = 20_000
    started = time.perf_counter()
    for first in range(0, args.cache_entries, chunk):
        n = min(chunk, args.cache_entries - first)
        # Random vectors made by the server: shipping millions of floats from here is slower
        # than the index build. (The correlated `i > 0` makes each row its own vector.)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO semantic_cache (alias, scope, dims, embedding, question, answer, "
                    "finish_reason, model) SELECT 'bench', 's', :dims, "
                    "(SELECT array_agg((random() - 0.5)::real) "
                    "FROM generate_series(1, CAST(:dims AS int)) "
                    "WHERE i > 0), 'q', 'answer ' || i, 'stop', 'm' "
                    "FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS i"
                ),
                {"dims": dims, "first": first + 1, "last": first + n},
            )
    filled_s = time.perf_counter() - started
    started = time.perf_counter()
    store.ensure_index(dims)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE semantic_cache"))
    index_s = time.perf_counter() - started
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT answer, embedding FROM semantic_cache WHERE alias = 'bench' "
                "ORDER BY random() LIMIT :n"
            ),
            {"n": args.lookups},
        ).all()
    times, found = [], 0
    for answer, embedding in rows:
        target = np.asarray(embedding, dtype=np.float32)
        target /= np.linalg.norm(target)
        # A paraphrase: the stored question's vector moved a little (cosine about 0.99).
        query = target + 0.005 * rng.normal(size=dims).astype(np.float32)
        query /= np.linalg.norm(query)
        t0 = time.perf_counter()
        hit = store.nearest("bench", "s", query.tolist())
        times.append((time.perf_counter() - t0) * 1000)
        found += int(hit is not None and hit.answer == answer)
    engine.dispose()
    times.sort()
    return {
        "entries": args.cache_entries,
        "fill_s": filled_s,
        "index_build_s": index_s,
        "lookup_p50_ms": statistics.median(times),
        "lookup_p95_ms": times[int(0.95 * (len(times) - 1))],
        "found_share": found / len(rows),
    }


def throughput_headline(rates: dict[str, list[float]], args: argparse.Namespace) -> str:
    """Both figures of Herd / llama-server; runs of too few calls never make it "met"."""
    ratio = paired(rates["herd"], rates["llama-server"])
    enough = args.requests >= MIN_CALLS_PER_RUN
    label = f"herd / llama-server inputs/s ({args.repeat} runs of {args.requests} calls)"
    line = headline(label, ratio, TARGET, min_rounds=MIN_ROUNDS if enough else args.repeat + 1)
    if not enough:
        line += f" (runs of under {MIN_CALLS_PER_RUN} calls: not enough data to meet it)"
    return line


def main() -> int:
    from app.store.demo import find_demo_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=str(find_demo_model().path))
    p.add_argument("--llama-server", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--cache-entries", type=int, default=100_000)
    p.add_argument("--lookups", type=int, default=200)
    args = p.parse_args()
    print(f"model {Path(args.model).name}, batch {args.batch}, {args.requests} calls per run, "
          f"{args.threads} threads, n_ctx {args.n_ctx}", flush=True)  # fmt: skip
    with ExitStack() as stack:
        herd, db_url = stack.enter_context(herd_worker(args, stack))
        anchor = stack.enter_context(llama_server(args, stack)) if args.llama_server else None
        rates: dict[str, list[float]] = {"herd": [], "llama-server": []}
        urls = {"herd": herd}
        if anchor:
            urls["llama-server"] = anchor
        for run in range(args.repeat):
            # Alternating, the order swapped every run, so that a slow moment of the shared
            # machine hits both alike.
            for name in list(urls)[:: 1 if run % 2 == 0 else -1]:
                rates[name].append(asyncio.run(throughput(urls[name], args, 1000 * run)))
        herd_rate = statistics.median(rates["herd"])
        print(f"herd          {herd_rate:8.1f} inputs/s  (runs {rates['herd']})")
        if anchor:
            anchor_rate = statistics.median(rates["llama-server"])
            print(f"llama-server  {anchor_rate:8.1f} inputs/s  (runs {rates['llama-server']})")
            print(throughput_headline(rates, args))
            print(f"mean cosine herd vs llama-server vectors: {agreement(herd, anchor):.4f}")
        dims = len(
            httpx.post(f"{herd}/v1/embeddings", json={"model": ALIAS, "input": "x"}).json()["data"][
                0
            ]["embedding"]
        )
        print(f"embedding one short question: p50 {question_latency_ms(herd):.1f} ms (herd)")
        if args.cache_entries:
            result = cache_latency(db_url, dims, args)
            print("semantic cache: " + ", ".join(f"{k} {v:.3g}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
