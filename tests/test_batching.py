"""The batched engine on real llama.cpp with the SmolLM2 demo model: outputs independent of
the batch, seeds, cancellation, prefix reuse, chat template, overflow, and a worker serving
--parallel 4 streams at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.engine.batch_job import BatchJob
from app.engine.batched import BatchedEngine
from app.engine.cpu_buffers import new_llama
from app.engine.errors import PromptTooLong
from app.engine.events import Finished, TextDelta
from app.engine.factory import load_batched_engine, make_engine
from app.engine.loader import LoadOptions
from app.engine.requests import ChatMessage, GenerationRequest, SamplingParams
from app.engine.slots import ATTENTION_TILE_ROWS, MIN_COPY_TOKENS, Slot, place, reusable
from app.store.demo import find_demo_model

N_CTX = 512
SYSTEM = "You are Herd's test assistant. You answer in short plain sentences. " + " ".join(
    f"Rule {i}: be brief, be correct, and never invent facts about item {i}." for i in range(12)
)
OTHER_PROMPTS = [
    "Name three fruits.",
    "What is the capital of France?",
    "Count from one to five.",
    "Write a haiku about rain.",
    "Why is the sky blue?",
    "List two colors.",
    "Say hello in Spanish.",
]


@pytest.fixture(scope="module")
def demo_path() -> Path:
    return find_demo_model().path


def demo_engine(parallel: int, n_ctx: int = N_CTX) -> Iterator[BatchedEngine]:
    """A batched engine of the demo model with parallel slots, closed after use (for the
    module-scoped engine fixtures here and in other engine tests)."""
    engine = load_batched_engine(
        LoadOptions(find_demo_model().path, n_ctx=n_ctx, parallel=parallel), max_queue=8
    )
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def crowd(demo_path: Path) -> Iterator[BatchedEngine]:
    """Eight slots: the engine under test."""
    engine = load_batched_engine(LoadOptions(demo_path, n_ctx=N_CTX, parallel=8), max_queue=8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def alone(demo_path: Path) -> Iterator[BatchedEngine]:
    """One slot, one request at a time: the reference each crowded output is compared to."""
    engine = load_batched_engine(LoadOptions(demo_path, n_ctx=N_CTX, parallel=1), max_queue=8)
    yield engine
    engine.close()


def chat(text: str, system: str | None = None, **sampling: Any) -> GenerationRequest:
    messages = [ChatMessage("user", text)]
    if system is not None:
        messages.insert(0, ChatMessage("system", system))
    return GenerationRequest(messages=tuple(messages), sampling=SamplingParams(**sampling))


def greedy(text: str, system: str | None = None, max_tokens: int = 16) -> GenerationRequest:
    return chat(text, system, temperature=0, max_tokens=max_tokens, ignore_eos=True)


async def drain(
    job: BatchJob, cancel_after: int | None = None, streaming: asyncio.Event | None = None
) -> tuple[str, Finished]:
    texts: list[str] = []
    async for event in job.events():
        if isinstance(event, TextDelta):
            texts.append(event.text)
            if streaming is not None:
                streaming.set()
            if cancel_after is not None and len(texts) >= cancel_after:
                job.cancel()
        else:
            return "".join(texts), event
    raise AssertionError("no Finished event")


async def streaming(job: BatchJob) -> asyncio.Task[tuple[str, Finished]]:
    """Drain job in a task, returned once it has streamed (so it decodes when others join)."""
    started = asyncio.Event()
    task = asyncio.create_task(drain(job, streaming=started))
    await asyncio.wait_for(started.wait(), timeout=60)
    return task


async def run_alone(engine: BatchedEngine, request: GenerationRequest) -> tuple[str, Finished]:
    return await drain(await engine.submit(request))


def test_place_picks_longest_prefix_and_copies_from_busy_slots() -> None:
    prompt = list(range(100))
    idle = Slot(0, kv_tokens=list(range(10)))
    busy = Slot(1, kv_tokens=[*range(90), 7, 7], busy=True)
    empty = Slot(2)
    placed = place(prompt, [idle, busy, empty], chunk=16)
    assert placed is not None and placed.copy_from is busy and placed.reused == 90
    assert placed.slot is empty  # the idle slot keeps its (shorter) cache
    # A whole cached prompt still decodes its last token, to get logits to sample from.
    exact = place(prompt, [Slot(0, kv_tokens=[*prompt, 5])], chunk=16)
    assert exact is not None and exact.reused == 99 and exact.copy_from is None
    # A short shared prefix is recomputed rather than copied.
    few = list(range(MIN_COPY_TOKENS - 1))
    short = place(prompt, [Slot(0, kv_tokens=few, busy=True), Slot(1)], chunk=16)
    assert short is not None and short.copy_from is None and short.reused == 0
    assert place(prompt, [Slot(0, busy=True)], chunk=16) is None


def test_reuse_stops_where_the_rest_decodes_as_in_a_cold_run() -> None:
    tile = ATTENTION_TILE_ROWS
    # The cold run decodes positions 0..266 in one chunk (tiled): the rest must be >= a tile.
    assert reusable(255, 267, chunk=512) == 267 - tile
    # The cold run's last chunk is short (row by row): any reuse inside it decodes alike.
    assert reusable(520, 530, chunk=512) == 520
    assert reusable(600, 1000, chunk=512) == 600
    assert reusable(990, 1000, chunk=512) == 1000 - tile
    assert reusable(5000, 100, chunk=512) == 100 - tile


def test_greedy_output_is_the_same_alone_and_among_seven_others(
    crowd: BatchedEngine, alone: BatchedEngine
) -> None:
    target = greedy("Tell me about llamas.", max_tokens=24)

    async def scenario() -> None:
        expected, solo = await run_alone(alone, target)
        jobs = [await crowd.submit(greedy(p, max_tokens=40)) for p in OTHER_PROMPTS]
        others = [await streaming(job) for job in jobs]  # all seven are generating now
        mine = await crowd.submit(target)
        text, done = await drain(mine)
        rest = await asyncio.gather(*others)
        assert crowd.stats().slots_busy == 0
        assert text == expected and done.usage.completion_tokens == 24, (text, expected)
        assert all(f.usage.completion_tokens == 40 for _t, f in rest)
        assert done.usage.prompt_tokens == solo.usage.prompt_tokens
        # Each of the seven also matches its own run alone.
        for prompt, (other_text, _f) in zip(OTHER_PROMPTS[:3], rest, strict=False):
            reference, _ = await run_alone(alone, greedy(prompt, max_tokens=40))
            assert other_text == reference, prompt

    asyncio.run(scenario())


def test_prompts_arriving_together_share_a_decode_and_match_their_runs_alone(
    crowd: BatchedEngine, alone: BatchedEngine
) -> None:
    # Short prompts admitted in one step are prefilled in one llama_decode, as llama-server
    # does; what each generates must not change.
    prompts = [*OTHER_PROMPTS, "Tell me about llamas."]

    async def scenario() -> None:
        expected = [(await run_alone(alone, greedy(p, max_tokens=12)))[0] for p in prompts]
        before = crowd.packed_decodes
        for _attempt in range(5):  # arrivals race the scheduler's steps; one pack suffices
            jobs = await asyncio.gather(*(crowd.submit(greedy(p, max_tokens=12)) for p in prompts))
            texts = [t for t, _f in await asyncio.gather(*(drain(j) for j in jobs))]
            assert texts == expected
            if crowd.packed_decodes > before:
                return
        raise AssertionError("the prompts were never prefilled together")

    asyncio.run(scenario())


def test_seeded_sampling_is_reproducible_in_a_crowd(
    crowd: BatchedEngine, alone: BatchedEngine
) -> None:
    def seeded(seed: int) -> GenerationRequest:
        return chat("Write a word.", temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed,
                    max_tokens=20, ignore_eos=True)  # fmt: skip

    async def scenario() -> None:
        reference, _ = await run_alone(alone, seeded(1234))
        jobs = [await crowd.submit(seeded(s)) for s in (1234, 1234, 99, 1234, 7)]
        texts = [t for t, _f in await asyncio.gather(*(drain(j) for j in jobs))]
        assert texts[0] == texts[1] == texts[3] == reference
        # Other seeds draw other samples (from the full distribution at temperature 1).
        assert texts[2] != reference or texts[4] != reference

    asyncio.run(scenario())


def test_cancelling_one_stream_leaves_the_others_untouched(
    crowd: BatchedEngine, alone: BatchedEngine
) -> None:
    prompts = OTHER_PROMPTS[:4]

    async def scenario() -> None:
        expected = [(await run_alone(alone, greedy(p, max_tokens=30)))[0] for p in prompts]
        jobs = [await crowd.submit(greedy(p, max_tokens=30)) for p in prompts]
        results = await asyncio.gather(
            *(drain(j, cancel_after=3 if i == 1 else None) for i, j in enumerate(jobs))
        )
        cancelled = results[1][1]
        assert cancelled.finish_reason == "cancelled" and cancelled.usage.completion_tokens < 30
        for i in (0, 2, 3):
            assert results[i][0] == expected[i] and results[i][1].finish_reason == "length"
        assert crowd.stats().slots_busy == 0

    asyncio.run(scenario())


def test_prefix_reuse_matches_a_cold_run_and_reports_cached_tokens(
    demo_path: Path, alone: BatchedEngine
) -> None:
    questions = ["What is rule 3?", "What is rule 7?", "Summarize the rules."]

    async def scenario() -> None:
        cold = []
        for q in questions:
            fresh = load_batched_engine(LoadOptions(demo_path, n_ctx=N_CTX, parallel=1))
            try:
                cold.append(await run_alone(fresh, greedy(q, SYSTEM, max_tokens=12)))
            finally:
                fresh.close()
        assert cold[0][1].usage.prompt_tokens > 200 and cold[0][1].usage.cached_tokens == 0
        engine = load_batched_engine(LoadOptions(demo_path, n_ctx=N_CTX, parallel=3))
        try:
            first = await run_alone(engine, greedy(questions[0], SYSTEM, max_tokens=12))
            assert first[1].usage.cached_tokens == 0 and first[0] == cold[0][0]
            # Same slot, same system prompt, another question: only the tail is decoded.
            second = await run_alone(engine, greedy(questions[1], SYSTEM, max_tokens=12))
            assert second[0] == cold[1][0]
            # The shared system prompt, less the rows decoded again (see reusable()).
            assert second[1].usage.cached_tokens > 150
            # The same prompt again reuses all but what the first token's logits need.
            again = await run_alone(engine, greedy(questions[1], SYSTEM, max_tokens=12))
            assert again[0] == cold[1][0]
            n = again[1].usage.prompt_tokens
            assert again[1].usage.cached_tokens == reusable(n, n, chunk=512)
            # While that slot is busy, a third request gets the prefix copied to another slot.
            busy = await engine.submit(greedy("Tell me a story.", SYSTEM, max_tokens=60))
            story = await streaming(busy)
            third = await run_alone(engine, greedy(questions[2], SYSTEM, max_tokens=12))
            await story
            assert third[0] == cold[2][0]
            assert third[1].usage.cached_tokens > 150
            assert third[1].usage.to_json()["prompt_tokens_details"] == {
                "cached_tokens": third[1].usage.cached_tokens
            }
        finally:
            engine.close()

    asyncio.run(scenario())


def test_chat_template_is_applied_as_llama_cpp_python_does(
    demo_path: Path, alone: BatchedEngine
) -> None:
    messages = [{"role": "user", "content": "Name a planet."}]
    llama = new_llama(model_path=str(demo_path), n_ctx=N_CTX, verbose=False)
    try:
        theirs = llama.create_chat_completion(messages=messages, temperature=0, max_tokens=16)  # type: ignore[arg-type]
    finally:
        llama.close()
    text, done = asyncio.run(run_alone(alone, chat("Name a planet.", temperature=0, max_tokens=16)))
    assert text == theirs["choices"][0]["message"]["content"]  # type: ignore[index]
    assert done.usage.prompt_tokens == theirs["usage"]["prompt_tokens"]  # type: ignore[index]
    prompt = alone._model.prepare(chat("Name a planet."))
    rendered = alone._model.llama.detokenize(prompt.tokens, special=True).decode()
    assert rendered.endswith("<|im_start|>user\nName a planet.<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_end|>" in prompt.stop


def test_overflow_is_refused_before_any_work(crowd: BatchedEngine) -> None:
    async def scenario() -> None:
        with pytest.raises(PromptTooLong) as too_long:
            await crowd.submit(GenerationRequest(prompt="word " * (N_CTX + 10)))
        assert too_long.value.n_ctx == N_CTX
        with pytest.raises(PromptTooLong) as no_room:
            await crowd.submit(chat("Hi.", max_tokens=N_CTX))
        assert no_room.value.max_tokens == N_CTX and "max_tokens" in str(no_room.value)
        assert crowd.stats().queue_length == 0 and crowd.stats().slots_busy == 0
        # Up to the edge is fine: prompt + max_tokens == the slot's context.
        request = chat("Hi.", max_tokens=4)
        prompt_tokens = len(crowd._model.prepare(request).tokens)
        edge = chat("Hi.", temperature=0, max_tokens=N_CTX - prompt_tokens, ignore_eos=True)
        _text, done = await drain(await crowd.submit(edge))
        assert done.usage.completion_tokens == N_CTX - prompt_tokens

    asyncio.run(scenario())


def test_make_engine_batches_the_demo_model(demo_path: Path) -> None:
    engine = make_engine(LoadOptions(demo_path, n_ctx=256, parallel=2))
    try:
        assert isinstance(engine, BatchedEngine)
        assert engine.info.slots_total == 2 and engine.info.n_ctx == 256
    finally:
        engine.close()


def test_worker_with_parallel_4_serves_four_streams_at_once(worker_launcher: Any) -> None:
    worker = worker_launcher.start(
        "--model", str(find_demo_model().path), "--alias", "smol", "--parallel", "4",
        "--n-ctx", "1024", "--max-queue", "0",
    )  # fmt: skip
    url = worker.wait_ready()
    health = httpx.get(f"{url}/health", timeout=5).json()
    assert health["slots_total"] == 4 and health["n_ctx"] == 1024
    first_chunk = threading.Barrier(5)
    peak = {"busy": 0}
    finals: list[dict[str, Any]] = []

    def stream(i: int) -> None:
        body = {
            "messages": [{"role": "user", "content": f"Tell me story number {i}."}],
            "max_tokens": 48, "ignore_eos": True, "temperature": 0, "stream": True,
        }  # fmt: skip
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            seen = False
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = httpx.Response(200, content=line[6:]).json()
                delta = chunk["choices"][0].get("delta", {}) if chunk.get("choices") else {}
                if delta.get("content") and not seen:
                    seen = True  # a generated token, not just the opening role chunk
                    first_chunk.wait(timeout=60)
                if chunk.get("usage"):
                    finals.append(chunk)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    first_chunk.wait(timeout=60)  # all four have streamed their first chunk
    peak["busy"] = httpx.get(f"{url}/health", timeout=5).json()["slots_busy"]
    # A fifth request finds every slot busy and no queue: refused at once.
    refused = httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=30,
    )
    for t in threads:
        t.join(timeout=120)
    assert peak["busy"] == 4
    assert refused.status_code == 429, refused.text
    assert len(finals) == 4
    for final in finals:
        usage = final["usage"]
        assert usage["completion_tokens"] == 48
        assert usage["prompt_tokens_details"]["cached_tokens"] >= 0
