"""Busy slots kept in one run: placement fills gaps, and a running sequence moves into a gap
without changing what it generates (real llama.cpp, the SmolLM2 demo model)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from app.engine.batched import BatchedEngine
from app.engine.slot_layout import Move, compaction, runs
from app.engine.slots import Slot, place
from tests.test_batching import demo_engine, drain, greedy, run_alone, streaming


def test_runs_counts_micro_batches_of_consecutive_ids() -> None:
    assert runs([]) == 0
    assert runs([0, 1, 2]) == 1
    assert runs([2, 0, 3]) == 2
    assert runs([0, 2, 4, 5]) == 3


def test_compaction_moves_the_last_sequence_into_the_lowest_gap() -> None:
    assert compaction({0, 2, 3}, {0, 2, 3}, 4) == Move(3, 1)
    assert compaction({1, 3}, {1, 3}, 4) == Move(3, 0)
    # One run already, or only sequences too close to their end could move: nothing.
    assert compaction({1, 2, 3}, {1, 2, 3}, 4) is None
    assert compaction({0, 2}, {0}, 4) is None
    # The highest movable one moves when the highest cannot.
    assert compaction({0, 2, 5}, {0, 2}, 6) == Move(2, 1)


def test_place_prefers_a_slot_that_keeps_the_busy_ones_together() -> None:
    prompt = list(range(40))
    slots = [Slot(0, busy=True), Slot(1), Slot(2, busy=True), Slot(3)]
    placed = place(prompt, slots, chunk=16)
    assert placed is not None and placed.slot.seq_id == 1
    # A prefix cached in a slot that would open a second run is copied next to the others.
    cached = [Slot(0, busy=True), Slot(1), Slot(2), Slot(3, kv_tokens=list(range(40)))]
    copied = place(prompt, cached, chunk=16)
    assert copied is not None and copied.slot.seq_id == 1
    assert copied.copy_from is cached[3] and copied.reused == 39


@pytest.fixture(scope="module")
def four() -> Iterator[BatchedEngine]:
    yield from demo_engine(4)


@pytest.fixture(scope="module")
def one() -> Iterator[BatchedEngine]:
    yield from demo_engine(1)


def test_a_stream_moved_into_a_gap_generates_what_it_would_alone(
    four: BatchedEngine, one: BatchedEngine
) -> None:
    # Slots 0, 1, 2 busy; the one in slot 1 ends first, leaving a gap the stream in slot 2
    # moves into. Every output must match its run alone, token for token.
    prompts = [("Tell me about llamas.", 40), ("Name three fruits.", 4), ("Why is rain wet?", 40)]

    async def scenario() -> None:
        expected = [(await run_alone(one, greedy(p, max_tokens=n)))[0] for p, n in prompts]
        before = four.slot_moves
        tasks = []
        for p, n in prompts:  # one after the other, so they take slots 0, 1, 2 in order
            tasks.append(await streaming(await four.submit(greedy(p, max_tokens=n))))
        texts = [t for t, _f in await asyncio.gather(*tasks)]
        assert texts == expected
        assert four.slot_moves > before, "the gap left by the short stream was never closed"
        assert four.stats().slots_busy == 0

    asyncio.run(scenario())


def test_a_new_prompt_after_a_move_reuses_the_moved_streams_cache(
    four: BatchedEngine, one: BatchedEngine
) -> None:
    # The source slot of a move keeps its cells: a prompt sharing that prefix reuses them.
    system = "You are a careful assistant. " + " ".join(f"Fact {i} is true." for i in range(30))

    async def scenario() -> None:
        follow = greedy("And a second thing?", system=system, max_tokens=8)
        expected, _ = await run_alone(one, follow)
        before = four.slot_moves
        first = await streaming(await four.submit(greedy("Name a fruit.", max_tokens=30)))
        short = await streaming(await four.submit(greedy("Hi.", max_tokens=4)))
        one_thing = greedy("One thing?", system=system, max_tokens=30)
        long = await streaming(await four.submit(one_thing))
        await short
        await asyncio.sleep(0.2)
        text, done = await drain(await four.submit(follow))
        await asyncio.gather(first, long)
        assert four.slot_moves > before, "the long stream never moved into the short one's slot"
        assert text == expected
        assert (done.usage.cached_tokens or 0) > 0

    asyncio.run(scenario())
