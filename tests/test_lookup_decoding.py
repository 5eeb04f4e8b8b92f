"""Prompt-lookup decoding: the n-gram drafts and their pacing (pure), and on real llama.cpp
with the SmolLM2 demo model, output token-identical with drafting on and off (several slots
busy at once, prompts past 256 and 512 positions), with the drafts counted in the usage."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from app.db.database import Database
from app.db.tables.gateway import Request
from app.engine.batched import BatchedEngine
from app.engine.events import Finished, TextDelta, Timings, Usage
from app.engine.factory import load_batched_engine
from app.engine.loader import LoadOptions
from app.engine.lookup_drafts import (
    MAX_DRAFT,
    MAX_PAUSE,
    MISSES_BEFORE_PAUSE,
    START_DRAFT,
    DraftPacer,
    NgramIndex,
)
from app.engine.requests import GenerationRequest, SamplingParams
from app.gateway.proxy import _account
from app.gateway.request_log import RequestRecord, write_entries
from app.openai_api.schemas import CompletionRequest
from app.store.demo import find_demo_model
from app.worker.generation import sampling
from app.worker.metrics import WorkerMetrics
from app.worker.state import WorkerState

# --- the drafts themselves (pure) ---


def test_the_longest_recent_match_gives_the_draft() -> None:
    # "1 2 3" occurs twice before the end; the later occurrence wins, and the longest
    # suffix (3 tokens) is looked up before shorter ones.
    index = NgramIndex([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 0, 2, 3])
    assert index.draft(2) == [7, 8]
    index.extend([7])
    # Now "2 3 7" matches the second occurrence: what followed it.
    assert index.draft(5) == [8, 0, 2, 3, 7]
    assert index.draft(0) == []


def test_shorter_suffixes_are_tried_and_one_token_is_not_enough() -> None:
    index = NgramIndex([5, 6, 7, 8, 1, 6, 7])
    # "1 6 7" never occurred, "6 7" did: followed by 8.
    assert index.draft(3) == [8, 1, 6]
    # A lone repeated token is no evidence (NGRAM_MIN is 2).
    assert NgramIndex([4, 1, 2, 3, 9, 4]).draft(3) == []
    assert NgramIndex([]).draft(3) == [] and NgramIndex([7]).draft(3) == []


def test_the_suffix_never_matches_itself_and_the_index_grows_token_by_token() -> None:
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3]
    whole = NgramIndex(tokens)
    grown = NgramIndex()
    for t in tokens:
        grown.extend([t])
    assert grown.tokens == whole.tokens
    for k in (1, 3, 8):
        assert grown.draft(k) == whole.draft(k)
    # A run of one token repeats itself: the overlapping earlier occurrence predicts it.
    assert NgramIndex([0, 7, 7, 7]).draft(4) == [7]


def test_a_copy_goes_on_from_its_source_where_its_n_grams_are_ambiguous() -> None:
    # Two lines share "1 2 3"; the answer is copying the first one.
    doc = [10, 1, 2, 3, 4, 11, 1, 2, 3, 5, 12]
    index = NgramIndex([*doc, 10, 1])
    assert index.draft(2) == [2, 3]
    index.extend([2, 3])
    # The latest "1 2 3" is the second line's, but the copy is of the first.
    assert index.draft(3) == [4, 11, 1]
    assert NgramIndex([*doc, 10, 1, 2, 3]).draft(3) == [5, 12, 10]
    # Once the answer leaves the source, the n-gram lookup takes over again.
    index.extend([4, 12])
    assert index.draft(2) == NgramIndex(index.tokens).draft(2) == []
    # The latest "1 2 3" is now the answer's own copy of the first line.
    index.extend([1, 2, 3])
    assert index.draft(2) == [4, 12]


def brute_force_draft(tokens: list[int], k: int) -> list[int]:
    """The same rule written the slow way, to check the index against."""
    for n in (3, 2):
        if len(tokens) < n:
            continue
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + k]
    return []


def test_the_index_agrees_with_a_brute_force_search() -> None:
    import random

    rng = random.Random(7)
    for _ in range(200):
        tokens = [rng.randrange(4) for _ in range(rng.randrange(1, 40))]
        k = rng.randrange(1, 6)
        assert NgramIndex(tokens).draft(k) == brute_force_draft(tokens, k), tokens


def test_the_pacer_grows_on_success_shrinks_on_misses_and_pauses() -> None:
    pacer = DraftPacer()
    assert pacer.wanted() == START_DRAFT
    pacer.record(START_DRAFT, START_DRAFT)
    assert pacer.wanted() == min(MAX_DRAFT, 2 * START_DRAFT)
    pacer.record(8, 8)
    pacer.record(8, 8)
    assert pacer.wanted() == MAX_DRAFT
    pacer.record(MAX_DRAFT, 2)
    assert pacer.wanted() == 3
    # Misses in a row pause drafting, each pause twice the last, up to MAX_PAUSE steps.
    pauses = []
    for _ in range(12):
        pacer.record(1, 0)
        n = 0
        while pacer.wanted() == 0:
            n += 1
        pauses.append(n)
    assert pauses[: MISSES_BEFORE_PAUSE - 1] == [0] * (MISSES_BEFORE_PAUSE - 1)
    paused = pauses[MISSES_BEFORE_PAUSE - 1 :]
    assert paused[:3] == [2, 4, 8] and max(paused) == MAX_PAUSE
    # One confirmed draft ends the pausing.
    pacer.record(1, 1)
    pacer.record(2, 0)
    assert pacer.wanted() > 0
    # Nothing drafted, nothing learned.
    before = pacer.size
    pacer.record(0, 0)
    assert pacer.size == before


def test_usage_reports_drafts_as_openai_prediction_tokens() -> None:
    usage = Usage(prompt_tokens=10, completion_tokens=5, drafted_tokens=7, accepted_tokens=4)
    assert usage.to_json()["completion_tokens_details"] == {
        "accepted_prediction_tokens": 4,
        "rejected_prediction_tokens": 3,
    }


def test_the_worker_counts_drafts_and_the_gateway_logs_them() -> None:
    """The worker's /metrics counters and the request log's two columns, from the usage."""
    finished = Finished(
        "length",
        Usage(prompt_tokens=10, completion_tokens=5, drafted_tokens=7, accepted_tokens=4),
        Timings(
            queue_ms=0,
            ttft_ms=1,
            prompt_ms=1,
            total_ms=2,
            tokens_per_second=1,
            time_per_output_token_ms=None,
        ),
    )
    metrics = WorkerMetrics()
    metrics.observe(finished)
    metrics.observe(finished)
    text = metrics.render(WorkerState(alias="a", model_path="m"))
    assert "herd_worker_draft_tokens_total 14\n" in text
    assert "herd_worker_draft_accepted_tokens_total 8\n" in text
    record = RequestRecord(id=uuid.uuid4(), created_at=datetime.now(UTC), endpoint="e")
    _account(record, finished.usage.to_json(), None)
    assert (record.drafted_tokens, record.accepted_tokens) == (7, 4)
    assert record.entry()["request"]["accepted_tokens"] == 4
    # A worker that says nothing of drafts leaves both empty.
    silent = RequestRecord(id=uuid.uuid4(), created_at=datetime.now(UTC), endpoint="e")
    _account(silent, {"prompt_tokens": 3, "completion_tokens": 1}, None)
    assert silent.drafted_tokens is None and silent.accepted_tokens is None


def test_the_request_log_keeps_the_draft_counts(database: Database) -> None:
    record = RequestRecord(id=uuid.uuid4(), created_at=datetime.now(UTC), endpoint="e")
    usage = Usage(prompt_tokens=3, completion_tokens=9, drafted_tokens=12, accepted_tokens=8)
    _account(record, usage.to_json(), None)
    write_entries(database.engine, [record.entry()])
    with database.engine.connect() as conn:
        row = conn.execute(
            select(Request.drafted_tokens, Request.accepted_tokens).where(Request.id == record.id)
        ).one()
    assert tuple(row) == (12, 8)


def test_a_request_opts_out_with_speculative_false() -> None:
    body = {"model": "m", "prompt": "x"}
    assert sampling(CompletionRequest.model_validate(body), None).draft
    off = CompletionRequest.model_validate({**body, "speculative": False})
    assert not sampling(off, None).draft


# --- on real llama.cpp with the demo model ---

CITIES = ["Leeds", "Oslo", "Porto", "Lyon", "Graz", "Turin", "Ghent", "Cork"]
PARTS = ["copper fittings", "brass valves", "steel bolts", "rubber seals", "oak panels"]


def inventory(lines: int, seed: int = 0) -> str:
    return "\n".join(
        f"Order {10234 + 37 * i + seed}: {(i + seed) % 7 + 2} x "
        f"{PARTS[(i * 3 + seed) % len(PARTS)]}, shipped to {CITIES[(i * 5 + seed) % 8]}."
        for i in range(lines)
    )


def copy_prompt(lines: int, seed: int = 0) -> str:
    """A document, then the start of its copy: the answer copies spans of the prompt."""
    doc = inventory(lines, seed)
    return f"Inventory:\n{doc}\n\nThe same inventory, copied:\n{doc.split(chr(10))[0]}\n"


Tokens = list[tuple[bytes, float]]


async def generate(
    engine: BatchedEngine, prompt: str, draft: bool, max_tokens: int, **sampling: float
) -> tuple[Tokens, Finished]:
    """Each output token (its piece and log probability) and the Finished event."""
    params = SamplingParams(
        temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=0, draft=draft
    )
    params = SamplingParams(**{**params.__dict__, **sampling})
    job = await engine.submit(GenerationRequest(prompt=prompt, sampling=params))
    tokens: Tokens = []
    async for event in job.events():
        if isinstance(event, TextDelta):
            tokens.extend((t.piece, t.logprob) for t in event.tokens)
        elif isinstance(event, Finished):
            return tokens, event
    raise AssertionError("no Finished event")


def first_difference(a: Tokens, b: Tokens) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


@pytest.fixture(scope="module")
def engine() -> Iterator[BatchedEngine]:
    options = LoadOptions(find_demo_model().path, n_ctx=1024, parallel=4)
    engine = load_batched_engine(options)
    yield engine
    engine.close()


def test_drafts_leave_outputs_identical_with_four_slots_busy(engine: BatchedEngine) -> None:
    """Greedy and seeded requests side by side, drafting on and off: the same tokens with the
    same log probabilities (so the same logits), and the copies accepted drafts. Every
    position stays below PACK_MAX_POS, where the engine's own output does not depend on
    what shares the batch (past it, see the next test)."""
    requests = [
        (copy_prompt(4), {}),
        (copy_prompt(4, seed=3), {}),
        ("Once upon a time, in a small village by the sea, there lived", {}),
        (copy_prompt(4, seed=5), {"temperature": 0.7, "seed": 42}),
    ]

    async def scenario() -> None:
        for prompt, _ in requests:
            n = len(engine._model.prepare(GenerationRequest(prompt=prompt)).tokens)
            assert n + 90 < 256, n
        runs = {}
        for draft in (False, True):
            runs[draft] = await asyncio.gather(
                *(generate(engine, p, draft, 90, **s) for p, s in requests)
            )
        for i, ((off, off_end), (on, on_end)) in enumerate(
            zip(runs[False], runs[True], strict=True)
        ):
            assert len(on) == len(off) == 90
            assert first_difference(off, on) is None, (i, first_difference(off, on))
            assert off_end.usage.drafted_tokens == 0
            usage = on_end.usage.to_json()["completion_tokens_details"]
            assert usage["accepted_prediction_tokens"] == on_end.usage.accepted_tokens
        copies = [runs[True][i][1].usage for i in (0, 1)]
        # The copies ran mostly on drafts: a verification works, not just a fallback.
        assert all(u.accepted_tokens >= 30 for u in copies), copies
        assert engine.stats().slots_busy == 0

    asyncio.run(scenario())


def test_no_drafts_past_pack_max_pos_and_a_long_prompt_is_unchanged(
    engine: BatchedEngine,
) -> None:
    """A copy that crosses position 256 drafts only below it, one whose prompt is past 512
    not at all; one request at a time (alone in the batch, as the split-KV case is)."""

    async def scenario() -> None:
        crossing = copy_prompt(8)
        long = copy_prompt(26)
        n_crossing = len(engine._model.prepare(GenerationRequest(prompt=crossing)).tokens)
        n_long = len(engine._model.prepare(GenerationRequest(prompt=long)).tokens)
        assert n_crossing < 230 < 256 < n_crossing + 100 and n_long > 512
        for prompt in (crossing, long):
            off, _ = await generate(engine, prompt, False, 100)
            on, finished = await generate(engine, prompt, True, 100)
            assert first_difference(off, on) is None, first_difference(off, on)
            if prompt is long:
                assert finished.usage.drafted_tokens == 0
            else:
                # Each confirmed draft holds its own position below 256.
                assert 0 < finished.usage.accepted_tokens < 256 - n_crossing

    asyncio.run(scenario())


def test_the_worker_can_turn_drafting_off(engine: BatchedEngine) -> None:
    async def scenario() -> None:
        engine.max_draft = 0
        try:
            _, finished = await generate(engine, copy_prompt(3), True, 40)
        finally:
            engine.max_draft = MAX_DRAFT
        assert finished.usage.drafted_tokens == 0

    asyncio.run(scenario())
