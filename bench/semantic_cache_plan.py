"""Semantic-cache lookup at a given size: PostgreSQL's plan for VectorStore.nearest's query and
where a lookup's time goes. Fills a fresh database on the embedded PostgreSQL (bench/.work)
with --entries random vectors spread over --aliases aliases (so the alias filter removes
rows, as with several cached aliases), builds the HNSW index as the gateway does, then
prints EXPLAIN (ANALYZE, BUFFERS) of one lookup and the p50 of VectorStore.nearest.

Example: python bench/semantic_cache_plan.py --entries 20000 --aliases 4
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import numpy as np
from gateway_bench import WORK, fresh_database
from sqlalchemy import text

from app.db import migrate
from app.db.embedded import EmbeddedPostgres
from app.db.engine import make_engine
from app.gateway.vector_store import EF_SEARCH, VectorStore, vector_literal


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=20_000)
    p.add_argument("--aliases", type=int, default=4)
    p.add_argument("--dims", type=int, default=576, help="576: the demo model's embeddings")
    p.add_argument("--lookups", type=int, default=100)
    args = p.parse_args()
    dims = args.dims
    embedded = EmbeddedPostgres(WORK / "herd-home" / "pgdata")
    try:
        with fresh_database(embedded.start()) as url:
            migrate.upgrade(url)
            engine = make_engine(url)
            store = VectorStore(engine)
            assert store.status() is None, "pgvector unavailable"
            started = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO semantic_cache (alias, scope, dims, embedding, question, "
                        "answer, finish_reason, model) SELECT 'a' || (i % :aliases), 's', :d, "
                        "(SELECT array_agg((random() - 0.5)::real) FROM generate_series(1, :d) "
                        "WHERE i > 0), 'q', 'answer ' || i, 'stop', 'm' "
                        "FROM generate_series(1, :n) AS i"
                    ),
                    {"d": dims, "n": args.entries, "aliases": args.aliases},
                )
            print(f"fill {time.perf_counter() - started:.1f} s", flush=True)
            started = time.perf_counter()
            store.ensure_index(dims)
            with engine.begin() as conn:
                conn.execute(text("ANALYZE semantic_cache"))
            print(f"HNSW index build {time.perf_counter() - started:.1f} s", flush=True)
            rng = np.random.default_rng(1)
            queries = rng.normal(size=(args.lookups, dims)).astype(np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            sql = (
                f"EXPLAIN (ANALYZE, BUFFERS) SELECT id, answer, "
                f"1 - ((embedding::vector({dims})) <=> CAST(:q AS vector({dims}))) "
                f"FROM semantic_cache WHERE dims = {dims} AND alias = 'a0' AND scope = 's' "
                f"ORDER BY (embedding::vector({dims})) <=> CAST(:q AS vector({dims})) LIMIT 1"
            )
            with engine.begin() as conn:
                conn.execute(text(f"SET LOCAL hnsw.ef_search = {EF_SEARCH}"))
                conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
                plan = conn.execute(text(sql), {"q": vector_literal(queries[0])}).scalars()
                for line in plan:
                    print(re.sub(r"'\[[^]]*\]'", "'[...]'", line))
            times = []
            for query in queries:
                vector = query.tolist()
                t = time.perf_counter()
                store.nearest("a0", "s", vector)
                times.append((time.perf_counter() - t) * 1000)
            print(
                f"VectorStore.nearest at {args.entries} entries ({args.aliases} aliases): "
                f"p50 {statistics.median(times):.2f} ms, "
                f"p95 {sorted(times)[int(0.95 * (len(times) - 1))]:.2f} ms"
            )
            engine.dispose()
    finally:
        embedded.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
