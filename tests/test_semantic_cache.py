"""The semantic cache on real parts: embedded PostgreSQL with pgvector, an embedding worker
and a chat worker (SmolLM2 demo model), `herd gateway`, the official openai client."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import numpy as np
import openai
from sqlalchemy import text

from app.analytics.scope import last
from app.analytics.semantic_cache import semantic_cache_rows
from app.control.aliases import AliasSettings, AliasStore
from app.db.database import Database
from app.db.pgvector import pgvector_problem
from app.gateway.vector_store import VectorStore
from tests.gateway_harness import wait_for
from tests.test_embeddings_api import CHAT_ALIAS, EMBED_ALIAS, pair  # noqa: F401  (a fixture)
from tests.test_gateway_e2e import gateway_url  # noqa: F401  (a fixture)
from tests.worker_process import WorkerProcess

QUESTION = "What is the capital city of France?"
PARAPHRASE = "Which city is the capital of France?"
UNRELATED = "How do I bake sourdough bread at home?"
SYSTEM = "You are a terse geography tutor."


def _similarity(url: str, a: str, b: str) -> float:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    data = client.embeddings.create(model=EMBED_ALIAS, input=[a, b]).data
    return float(np.dot(data[0].embedding, data[1].embedding))


def _rows(database: Database, response_id: str) -> dict[str, object]:
    with database.engine.connect() as conn:
        row = (
            conn.execute(
                text("SELECT cache_hit, cache_similarity, worker_id FROM requests WHERE id = :id"),
                {"id": response_id},
            )
            .mappings()
            .one()
        )
    return dict(row)


def _logged(database: Database, response_id: str) -> bool:
    with database.engine.connect() as conn:
        return bool(
            conn.execute(
                text("SELECT count(*) FROM requests WHERE id = :id"), {"id": response_id}
            ).scalar_one()
        )


def _entries(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM semantic_cache")).scalar_one())


def test_paraphrases_hit_above_the_threshold_and_miss_below(
    pair: tuple[WorkerProcess, WorkerProcess],  # noqa: F811
    gateway_url: str,  # noqa: F811
    database: Database,
) -> None:
    embed, _ = pair
    assert embed.url is not None
    assert pgvector_problem(database.engine) is None  # the embedded server ships pgvector
    near = _similarity(embed.url, QUESTION, PARAPHRASE)
    far = _similarity(embed.url, QUESTION, UNRELATED)
    assert near > far, (near, far)
    threshold = (near + far) / 2
    store = AliasStore(database.engine)
    store.put(
        CHAT_ALIAS,
        AliasSettings(
            cache_enabled=False,  # the exact cache must not be what answers
            cache_ttl_s=60,
            semantic_cache_alias=EMBED_ALIAS,
            semantic_cache_threshold=threshold,
        ),
    )
    wait_for(lambda: httpx.get(f"{gateway_url}/health").json()["live_workers"] == 2, 30)
    time.sleep(0.6)  # the gateway reloads alias settings every 0.2 s
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="none", max_retries=0)

    def ask(
        question: str, system: str = SYSTEM, **extra: object
    ) -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model=CHAT_ALIAS,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=12,
            temperature=0.9,  # not deterministic: only the semantic cache can repeat it
            **extra,  # type: ignore[arg-type]
        )

    first = ask(QUESTION)
    wait_for(lambda: _entries(database) == 1, 15)
    wait_for(lambda: _logged(database, first.id), 15)
    assert _rows(database, first.id)["cache_hit"] is False

    again = ask(QUESTION)
    assert again.choices[0].message.content == first.choices[0].message.content
    paraphrased = ask(PARAPHRASE)
    assert paraphrased.choices[0].message.content == first.choices[0].message.content
    for answer, at_least in ((again, 0.999), (paraphrased, threshold)):
        wait_for(lambda a=answer: _logged(database, a.id), 15)  # type: ignore[misc]
        row = _rows(database, answer.id)
        assert row["cache_hit"] is True and row["worker_id"] is None
        assert float(row["cache_similarity"]) >= at_least  # type: ignore[arg-type]

    # Streamed hits replay the same answer.
    streamed = client.chat.completions.create(
        model=CHAT_ALIAS,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        max_tokens=12,
        temperature=0.9,
        stream=True,
    )
    text_out = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text_out == first.choices[0].message.content

    # Below the threshold, another system prompt or other sampling settings: fresh answers.
    unrelated = ask(UNRELATED)
    other_system = ask(QUESTION, system="You are a pirate.")
    other_sampling = ask(QUESTION, top_p=0.5)
    for answer in (unrelated, other_system, other_sampling):
        wait_for(lambda a=answer: _logged(database, a.id), 15)  # type: ignore[misc]
        row = _rows(database, answer.id)
        assert row["cache_hit"] is False and row["worker_id"] is not None
    wait_for(lambda: _entries(database) == 4, 15)

    # Raise the threshold above the paraphrase's similarity: now a miss.
    store.put(
        CHAT_ALIAS,
        AliasSettings(
            cache_enabled=False,
            cache_ttl_s=60,
            semantic_cache_alias=EMBED_ALIAS,
            semantic_cache_threshold=min(1.0, (near + 1) / 2),
        ),
    )
    time.sleep(0.6)
    strict = ask(PARAPHRASE)
    wait_for(lambda: _logged(database, strict.id), 15)
    assert _rows(database, strict.id)["cache_hit"] is False

    # The index the gateway made, and the lookup using it once the table is large.
    with database.engine.connect() as conn:
        indexes = (
            conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'semantic_cache'")
            )
            .scalars()
            .all()
        )
    assert "ix_semantic_cache_hnsw_576" in indexes

    # Feedback on a cached and a fresh answer shows in Monitoring's comparison.
    for answer, rating in ((paraphrased, 1), (unrelated, -1)):
        vote = httpx.post(
            f"{gateway_url}/v1/feedback",
            json={"response_id": answer.id, "rating": rating, "user": "u"},
        )
        assert vote.status_code == 200, vote.text
    rows = semantic_cache_rows(database.engine, last(timedelta(hours=1)))
    assert len(rows) == 1 and rows[0]["alias"] == CHAT_ALIAS
    assert rows[0]["semantic hits"] == 3 and rows[0]["chat calls"] == 8
    assert rows[0]["thumbs-up cached"] == 1.0 and rows[0]["thumbs-up fresh"] == 0.0


def test_nearest_uses_the_hnsw_index_among_many_entries(database: Database) -> None:
    store = VectorStore(database.engine)
    assert store.status() is None
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.ensure_index(16)
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO semantic_cache (alias, scope, dims, embedding, question, answer, "
                "finish_reason, model) SELECT 'a', 's', 16, v, 'q', 'answer ' || i, 'stop', 'm' "
                "FROM unnest(CAST(:ids AS int[])) WITH ORDINALITY AS t(i, n) "
                "JOIN LATERAL (SELECT CAST(:flat AS real[]) AS flat) f ON true "
                "CROSS JOIN LATERAL (SELECT f.flat[(i - 1) * 16 + 1 : i * 16] AS v) x"
            ),
            {"ids": list(range(1, 3001)), "flat": vectors.ravel().tolist()},
        )
        conn.execute(text("ANALYZE semantic_cache"))
    query = vectors[1234] + 0.01 * rng.normal(size=16).astype(np.float32)
    found = store.nearest("a", "s", (query / np.linalg.norm(query)).tolist())
    assert found is not None and found.answer == "answer 1235" and found.similarity > 0.99
    assert store.nearest("a", "other scope", vectors[0].tolist()) is None
    with database.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(
            conn.execute(
                text(
                    "EXPLAIN SELECT id FROM semantic_cache WHERE dims = 16 "
                    "ORDER BY (embedding::vector(16)) <=> CAST(:q AS vector(16)) LIMIT 1"
                ),
                {"q": "[" + ",".join("0.25" for _ in range(16)) + "]"},
            ).scalars()
        )
    assert "ix_semantic_cache_hnsw_16" in plan, plan
