"""The embedding engine on real llama.cpp with the SmolLM2 demo model: inputs of several
requests batched into one decode, vectors independent of their batch mates, clear refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.engine.embedder import MAX_SEQS, EmbeddingEngine, load_embedding_engine
from app.engine.errors import BadRequest
from app.engine.loader import LoadOptions
from app.engine.requests import GenerationRequest
from app.store.demo import find_demo_model

MAX_TOKENS = 1024
TEXTS = [f"Sentence number {i} is about {topic}." for i, topic in enumerate(
    ["cats", "the sea", "taxes", "jazz", "rockets", "bread", "rain", "chess"] * 4
)]  # fmt: skip


@pytest.fixture(scope="module")
def engine() -> Iterator[EmbeddingEngine]:
    path: Path = find_demo_model().path
    eng = load_embedding_engine(LoadOptions(path, n_ctx=MAX_TOKENS), "model", max_queue=8)
    yield eng
    eng.close()


def test_a_batch_of_32_is_one_decode_and_matches_inputs_embedded_alone(
    engine: EmbeddingEngine,
) -> None:
    # SmolLM2's GGUF names no pooling: mean, as the log says.
    assert engine.embedding.pooling == "mean"
    assert engine.embedding.dimensions == 576
    tokens = [engine.tokenize(t) for t in TEXTS]
    assert len(tokens) == 32 and sum(map(len, tokens)) <= MAX_TOKENS

    before = engine.decodes
    batch = asyncio.run(engine.embed(tokens))
    assert engine.decodes - before == 1
    assert batch.shape == (32, 576)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)

    alone = np.stack([asyncio.run(engine.embed([t]))[0] for t in tokens[:4]])
    # Each sequence attends only to itself: its vector does not depend on its batch mates
    # (up to the rounding of llama.cpp's kernels at another batch size).
    assert np.all(np.sum(alone * batch[:4], axis=1) > 0.999)
    # Different sentences give different vectors; the same sentence the same one.
    assert float(batch[0] @ batch[1]) < 0.999
    again = asyncio.run(engine.embed([tokens[0], tokens[0]]))
    assert float(again[0] @ again[1]) > 0.9999


def test_requests_that_arrive_together_share_decodes(engine: EmbeddingEngine) -> None:
    tokens = [engine.tokenize(t) for t in TEXTS]

    async def together() -> list[np.ndarray]:
        return await asyncio.gather(*(engine.embed([t]) for t in tokens[:8]))

    before = engine.decodes
    vectors = asyncio.run(together())
    # The first request may start alone; the other seven wait and go in one decode.
    assert engine.decodes - before <= 2
    assert all(v.shape == (1, 576) for v in vectors)

    # More inputs than sequences per decode: split over several decodes, order kept.
    many = tokens * 3  # 96 inputs
    before = engine.decodes
    result = asyncio.run(engine.embed(many))
    assert engine.decodes - before == -(-len(many) // MAX_SEQS)
    assert float(result[0] @ result[32]) > 0.999


def test_bad_inputs_are_refused_before_llama_cpp_sees_them(engine: EmbeddingEngine) -> None:
    with pytest.raises(BadRequest, match="empty"):
        asyncio.run(engine.embed([[]]))
    with pytest.raises(BadRequest, match="vocabulary"):
        asyncio.run(engine.embed([[1, 2, 10**9]]))
    with pytest.raises(BadRequest, match="vocabulary"):
        asyncio.run(engine.embed([[-1]]))
    with pytest.raises(BadRequest, match="limit of 1024 tokens"):
        asyncio.run(engine.embed([[5] * (MAX_TOKENS + 1)]))
    with pytest.raises(BadRequest, match="embeddings only"):
        asyncio.run(engine.submit(GenerationRequest(prompt="hi")))
    # Still serving after the refusals.
    assert asyncio.run(engine.embed([[5, 6, 7]])).shape == (1, 576)
