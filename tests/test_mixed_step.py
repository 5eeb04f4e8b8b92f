"""One decode per step: running streams' next tokens and new prompts' chunks together, under a
batch budget measured from step costs; outputs token-identical to each request alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from app.engine import factory
from app.engine.batched import BatchedEngine
from app.engine.step_costs import (
    DEFAULT_IDLE_TOKENS,
    DEFAULT_LIVE_TOKENS,
    MAX_CUT_TOKENS,
    StepCosts,
)
from tests.test_batching import demo_engine, drain, greedy, run_alone, streaming


def test_batch_budget_is_one_plain_step_of_prompt_tokens() -> None:
    costs = StepCosts()
    # Nothing measured yet: the defaults.
    assert costs.batch_tokens(live_load=True) == DEFAULT_LIVE_TOKENS
    assert costs.batch_tokens(live_load=False) == DEFAULT_IDLE_TOKENS
    costs.record(prompt_tokens=0, rows=4, seconds=0.020)  # a plain step: 20 ms
    costs.record(prompt_tokens=40, rows=0, seconds=0.100)  # a prompt token: 2.5 ms
    assert costs.batch_tokens(live_load=True) == 8
    assert costs.batch_tokens(live_load=False) == 16
    # A mixed decode: the rows' share (one plain step) comes off before the per-token cost.
    costs.record(prompt_tokens=40, rows=3, seconds=0.120)
    assert costs.token_s == pytest.approx(0.0025)
    # Too few prompt tokens say nothing; the budget never drops below one or above a cut.
    costs.record(prompt_tokens=2, rows=0, seconds=5.0)
    assert costs.token_s == pytest.approx(0.0025)
    assert StepCosts(step_s=0.001, token_s=1.0).batch_tokens(live_load=True) == 1
    assert StepCosts(step_s=1.0, token_s=0.001).batch_tokens(live_load=False) == MAX_CUT_TOKENS


@pytest.fixture(scope="module")
def four() -> Iterator[BatchedEngine]:
    yield from demo_engine(4)


@pytest.fixture(scope="module")
def one() -> Iterator[BatchedEngine]:
    yield from demo_engine(1)


def test_prompts_arriving_mid_stream_share_the_streams_decode_and_match_alone(
    four: BatchedEngine, one: BatchedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    early = ["Tell me about llamas.", "Why is the sky blue?"]
    late = ["Name three fruits.", "Count from one to five."]
    mixed: list[tuple[int, int]] = []
    decode_step = four._decode_step

    def watched(generating: Any, chunks: Any) -> Any:
        if generating and chunks:
            mixed.append((len(generating), len(chunks)))
        return decode_step(generating, chunks)

    async def scenario() -> None:
        expected = [(await run_alone(one, greedy(p, max_tokens=20)))[0] for p in early + late]
        monkeypatch.setattr(four, "_decode_step", watched)
        running = [await streaming(await four.submit(greedy(p, max_tokens=20))) for p in early]
        # These arrive while the first two stream: their prompts ride the streams' decode.
        jobs = await asyncio.gather(*(four.submit(greedy(p, max_tokens=20)) for p in late))
        rest = [await drain(job) for job in jobs]
        texts = [t for t, _f in await asyncio.gather(*running)] + [t for t, _f in rest]
        assert texts == expected
        assert mixed, "no prompt chunk shared a decode with the running streams"

    asyncio.run(scenario())


def test_a_prompt_chunk_never_overflows_the_step_beside_running_streams(
    one: BatchedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 64-token step: two streams' next tokens and a new 63-token prompt (one packable
    # chunk) do not fit together. The chunk is cut to the room the streams leave (exact for
    # a packable chunk), never added past the batch's capacity.
    monkeypatch.setattr(factory, "STEP_TOKENS", 64)
    engines = demo_engine(4, n_ctx=256)
    small = next(engines)
    try:
        words = ["the"]
        while len(small._model.prepare(greedy(" ".join(words))).tokens) < 63:
            words.append("the")
        prompt = " ".join(words)
        assert len(small._model.prepare(greedy(prompt)).tokens) == 63

        async def scenario() -> None:
            expected, _ = await run_alone(one, greedy(prompt, max_tokens=8))
            streams = [
                await streaming(await small.submit(greedy(p, max_tokens=60)))
                for p in ("Count to fifty.", "Name every month.")
            ]
            text, done = await drain(await small.submit(greedy(prompt, max_tokens=8)))
            await asyncio.gather(*streams)
            assert done.finish_reason == "length" and text == expected

        asyncio.run(scenario())
    finally:
        engines.close()
