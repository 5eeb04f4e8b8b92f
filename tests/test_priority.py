"""Priority classes in the batched engine on real llama.cpp with the SmolLM2 demo model: batch
requests run alone like interactive ones, yield their slots to interactive requests at once,
resume with the same greedy output and usage, prefill after interactive prompts, queue behind
interactive requests, and finish under a stream of interactive traffic."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.engine.admission import LIVE_QUIET_S
from app.engine.batched import BatchedEngine
from app.engine.embedder import MAX_SEQS, load_embedding_engine
from app.engine.errors import QueueFull
from app.engine.events import Finished, TextDelta
from app.engine.factory import load_batched_engine, make_engine
from app.engine.job import JobChannel
from app.engine.loader import LoadOptions
from app.engine.requests import ChatMessage, GenerationRequest, Priority, SamplingParams
from app.engine.single_slot import SingleSlotEngine
from app.engine.waiting import WaitingQueue
from app.store.demo import find_demo_model
from app.worker.priority import PRIORITY_HEADER

N_CTX = 512
# Long enough to be prefilled alone (not packed with short prompts): its chunk is a tile.
LONG_CONTEXT = " ".join(f"Fact {i}: the herd has {i} llamas on hill {i % 7}." for i in range(12))


@pytest.fixture(scope="module")
def demo_path() -> Path:
    return find_demo_model().path


@pytest.fixture(scope="module")
def pair(demo_path: Path) -> Iterator[BatchedEngine]:
    """Two slots: small enough for a couple of batch jobs to fill."""
    engine = load_batched_engine(LoadOptions(demo_path, n_ctx=N_CTX, parallel=2), max_queue=8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def single(demo_path: Path) -> Iterator[BatchedEngine]:
    engine = load_batched_engine(LoadOptions(demo_path, n_ctx=N_CTX, parallel=1), max_queue=8)
    yield engine
    engine.close()


def greedy(
    text: str, priority: Priority = "interactive", max_tokens: int = 16, system: str | None = None
) -> GenerationRequest:
    messages = [ChatMessage("user", text)]
    if system is not None:
        messages.insert(0, ChatMessage("system", system))
    sampling = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return GenerationRequest(messages=tuple(messages), sampling=sampling, priority=priority)


class Log:
    """The order in which the caller saw events: (name, 'first' | 'finished')."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.streaming: dict[str, asyncio.Event] = {}

    def index(self, name: str, what: str) -> int:
        return self.events.index((name, what))

    async def drain(self, name: str, job: JobChannel) -> tuple[str, Finished]:
        texts: list[str] = []
        started = self.streaming.setdefault(name, asyncio.Event())
        async for event in job.events():
            if isinstance(event, TextDelta):
                if not texts:
                    self.events.append((name, "first"))
                    started.set()
                texts.append(event.text)
            else:
                self.events.append((name, "finished"))
                started.set()
                return "".join(texts), event
        raise AssertionError("no Finished event")

    async def streamed(self, name: str, job: JobChannel) -> asyncio.Task[tuple[str, Finished]]:
        """Drain job in a task, returned once its first token is out (it holds a slot)."""
        task = asyncio.create_task(self.drain(name, job))
        await asyncio.sleep(0)
        await asyncio.wait_for(self.streaming[name].wait(), timeout=120)
        return task


async def run(engine: BatchedEngine, request: GenerationRequest) -> tuple[str, Finished]:
    return await Log().drain("alone", await engine.submit(request))


def same_usage(a: Finished, b: Finished) -> bool:
    return (a.usage.prompt_tokens, a.usage.completion_tokens, a.finish_reason) == (
        b.usage.prompt_tokens,
        b.usage.completion_tokens,
        b.finish_reason,
    )


def test_waiting_queue_serves_interactive_first_and_resumes_preempted_first() -> None:
    class Job:
        def __init__(self, name: str, priority: Priority) -> None:
            self.name, self.priority = name, priority

    queue: WaitingQueue[Job] = WaitingQueue()
    b1, b2, i1, i2 = (
        Job("b1", "batch"),
        Job("b2", "batch"),
        Job("i1", "interactive"),
        Job("i2", "interactive"),
    )
    for job in (b1, i1, b2, i2):
        queue.append(job)
    assert len(queue) == 4 and queue.count("batch") == 2
    resumed = Job("resumed", "batch")
    queue.put_back(resumed)
    assert queue.remove(b2) and not queue.remove(b2)
    order = []
    while (job := queue.pop()) is not None:
        order.append(job.name)
    assert order == ["i1", "i2", "resumed", "b1"]


def test_a_batch_request_alone_runs_like_an_interactive_one(pair: BatchedEngine) -> None:
    async def scenario() -> None:
        live = await run(pair, greedy("Name three rivers.", max_tokens=20))
        batch = await run(pair, greedy("Name three rivers.", "batch", max_tokens=20))
        assert batch[0] == live[0] and same_usage(batch[1], live[1])
        assert pair.stats().slots_busy == 0 and pair.stats().batch_busy == 0

    asyncio.run(scenario())


def test_interactive_request_preempts_batch_and_batch_resumes_exactly(
    pair: BatchedEngine,
) -> None:
    prompts = ["Tell me about llamas.", "Describe a mountain village."]

    async def scenario() -> None:
        expected = [await run(pair, greedy(p, "batch", max_tokens=80)) for p in prompts]
        log = Log()
        before = pair.stats().preemptions
        batch = [
            await log.streamed(f"b{i}", await pair.submit(greedy(p, "batch", max_tokens=80)))
            for i, p in enumerate(prompts)
        ]
        stats = pair.stats()
        assert stats.slots_busy == 2 and stats.batch_busy == 2  # every slot runs batch work
        live = await pair.submit(greedy("What is two plus two?", max_tokens=6))
        # Not refused although every slot is busy: batch slots count as free for live traffic.
        text, done = await log.drain("live", live)
        results = await asyncio.gather(*batch)
        # The interactive answer started and ended while both batch jobs were still running.
        assert log.index("live", "finished") < log.index("b0", "finished")
        assert log.index("live", "finished") < log.index("b1", "finished")
        assert done.usage.completion_tokens == 6 and text
        assert pair.stats().preemptions == before + 1
        # The youngest batch job gave its slot; both answers are what they were unpreempted.
        for (got_text, got), (want_text, want) in zip(results, expected, strict=True):
            assert got_text == want_text
            assert same_usage(got, want)
        after = pair.stats()
        assert after.slots_busy == 0 and after.batch_busy == 0 and after.batch_waiting == 0

    asyncio.run(scenario())


# Batch prompt tokens a step may carry, pinned so the tests do not depend on this machine's
# measured step costs (step_costs.py computes them; tests/test_step_costs.py checks that).
LIVE_BATCH_CHUNK = 8
IDLE_BATCH_CHUNK = 16


def pin_batch_budget(pair: BatchedEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    def budget(live_load: bool) -> int:
        return LIVE_BATCH_CHUNK if live_load else IDLE_BATCH_CHUNK

    monkeypatch.setattr(pair._decoder.costs, "batch_tokens", budget)


def watch_batch_prompts(pair: BatchedEngine, monkeypatch: pytest.MonkeyPatch, seen: Any) -> None:
    """Call seen(tokens) for every batch prompt piece the engine decodes: alone, packed with
    other prompts, or beside the running streams' next tokens."""
    prefill_chunk, prefill_packed, decode_step = (
        pair._prefill_chunk,
        pair._prefill_packed,
        pair._decode_step,
    )

    def chunk(r: Any, *cut: Any) -> int:
        used = prefill_chunk(r, *cut)
        if r.job.priority == "batch" and used:
            seen(used)
        return used

    def packed(jobs: Any, *cut: Any) -> int:
        before = {id(r): r.prefilled for r in jobs}
        used = prefill_packed(jobs, *cut)
        for r in jobs:
            if r.job.priority == "batch" and r.prefilled > before[id(r)]:
                seen(r.prefilled - before[id(r)])
        return used

    def step(generating: Any, chunks: Any) -> Any:
        for r, end in chunks:
            if r.job.priority == "batch":
                seen(end - r.prefilled)
        return decode_step(generating, chunks)

    monkeypatch.setattr(pair, "_prefill_chunk", chunk)
    monkeypatch.setattr(pair, "_prefill_packed", packed)
    monkeypatch.setattr(pair, "_decode_step", step)


def test_batch_prompts_go_in_short_exact_chunks_while_live_work_runs(
    pair: BatchedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = "Describe a mountain village in detail: its people, its houses and its llamas."
    chunks: list[int] = []

    async def scenario() -> None:
        expected = await run(pair, greedy(prompt, "batch", max_tokens=24))
        # Two other prompts at once overwrite both slots' caches: the prompt starts cold again.
        await asyncio.gather(*(run(pair, greedy(f"Name {n} rivers.", max_tokens=2)) for n in "23"))
        pin_batch_budget(pair, monkeypatch)
        watch_batch_prompts(pair, monkeypatch, chunks.append)
        log = Log()
        live = await pair.submit(greedy("Count to fifty.", max_tokens=400))
        holder = await log.streamed("live", live)
        got = await log.drain("batch", await pair.submit(greedy(prompt, "batch", max_tokens=24)))
        live.cancel()
        await holder
        # Under live load the batch prompt went in pieces of at most LIVE_BATCH_CHUNK tokens,
        # and its greedy answer is the one it gives alone.
        assert len(chunks) >= 2 and max(chunks) <= LIVE_BATCH_CHUNK
        assert max(chunks) == LIVE_BATCH_CHUNK  # cut at the budget, not finer
        assert got[0] == expected[0] and same_usage(got[1], expected[1])

    asyncio.run(scenario())


def test_batch_prompt_work_stays_short_with_no_live_work_and_changes_no_answer(
    pair: BatchedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = [
        "Describe a mountain village in detail: its people, its houses and its llamas.",
        "Explain how a river carves a valley over thousands of years, step by step.",
    ]
    per_step: list[int] = []
    step_once = pair._step_once

    def step(running: Any) -> Any:
        per_step.append(0)
        return step_once(running)

    def seen(tokens: int) -> None:
        per_step[-1] += tokens

    async def scenario() -> None:
        # Interactive prompts are prefilled in whole chunks: the reference answers.
        expected = [await run(pair, greedy(p, max_tokens=12)) for p in prompts]
        await asyncio.gather(*(run(pair, greedy(f"Name {n} rivers.", max_tokens=2)) for n in "23"))
        pin_batch_budget(pair, monkeypatch)
        monkeypatch.setattr(pair, "_step_once", step)
        watch_batch_prompts(pair, monkeypatch, seen)
        got = await asyncio.gather(*(run(pair, greedy(p, "batch", max_tokens=12)) for p in prompts))
        # Both prompts went in (cold caches) over several steps, none decoding more than
        # IDLE_BATCH_CHUNK batch prompt tokens; the answers are the interactive ones.
        assert sum(per_step) > 2 * IDLE_BATCH_CHUNK
        assert max(per_step) <= IDLE_BATCH_CHUNK
        for (got_text, got_done), (want_text, want_done) in zip(got, expected, strict=True):
            assert got_text == want_text and same_usage(got_done, want_done)

    asyncio.run(scenario())


def test_interactive_prompts_are_prefilled_before_batch_prompts(pair: BatchedEngine) -> None:
    async def scenario() -> None:
        log = Log()
        # Two interactive streams hold both slots (interactive work is never preempted).
        holders = [
            await pair.submit(greedy(f"Count to {n}.", max_tokens=200)) for n in ("fifty", "sixty")
        ]
        tasks = [await log.streamed(f"h{i}", job) for i, job in enumerate(holders)]
        # A batch request with a long prompt queues first, then a short interactive one.
        batch = await pair.submit(greedy("Which hill has most llamas?", "batch", 8, LONG_CONTEXT))
        live = await pair.submit(greedy("Say hi.", max_tokens=8))
        assert pair.stats().queue_length == 2 and pair.stats().batch_waiting == 1
        drains = [
            asyncio.create_task(log.drain("batch", batch)),
            asyncio.create_task(log.drain("live", live)),
        ]
        for job in holders:  # both slots free up between the same two steps (or one by one)
            job.cancel()
        await asyncio.gather(*tasks, *drains)
        # Admitted together or one slot at a time, the interactive request was served first:
        # its first token is out before the batch prompt's chunk was even decoded.
        assert log.index("live", "first") < log.index("batch", "first")

    asyncio.run(scenario())


def test_interactive_requests_queue_ahead_of_batch_and_batch_waits_its_turn(
    single: BatchedEngine,
) -> None:
    async def scenario() -> None:
        log = Log()
        holder = await log.streamed("holder", await single.submit(greedy("Hi.", max_tokens=30)))
        first_batch = await single.submit(greedy("Name a fruit.", "batch", max_tokens=4))
        second_batch = await single.submit(greedy("Name a tree.", "batch", max_tokens=4))
        live = await single.submit(greedy("Name a color.", max_tokens=4))
        await asyncio.gather(
            holder,
            log.drain("b1", first_batch),
            log.drain("b2", second_batch),
            log.drain("live", live),
        )
        assert log.index("holder", "finished") < log.index("live", "first")
        assert log.index("live", "finished") < log.index("b1", "first")
        assert log.index("b1", "finished") < log.index("b2", "first")

    asyncio.run(scenario())


def test_batch_finishes_under_a_stream_of_interactive_requests(
    pair: BatchedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two slots, two batch jobs, and one interactive request after another: each takes a slot
    # from the younger batch job, which resumes in the gaps and runs on once the elder ends.
    # The batch prompt budget is pinned: on a loaded machine the measured one can be a token
    # or two, and the younger job would still be in its prompt when the elder ends.
    pin_batch_budget(pair, monkeypatch)
    requests = [
        greedy("Write a sentence about rain.", "batch", max_tokens=24),
        greedy("Write a sentence about snow.", "batch", max_tokens=12),
    ]

    async def scenario() -> None:
        expected = [await run(pair, r) for r in requests]
        log = Log()
        before = pair.stats().preemptions
        batch = [await log.streamed(f"b{i}", await pair.submit(r)) for i, r in enumerate(requests)]
        sent = 0
        while not all(task.done() for task in batch):
            assert sent < 200, "the batch jobs never finished"
            live = await pair.submit(greedy("Hi.", max_tokens=3))
            await log.drain(f"live{sent}", live)
            sent += 1
        for task, (want_text, want) in zip(batch, expected, strict=True):
            got_text, got = await task
            assert got_text == want_text and same_usage(got, want)
        assert pair.stats().preemptions > before
        assert pair.stats().slots_busy == 0

    asyncio.run(scenario())


def test_a_preempted_batch_job_cancelled_while_waiting_ends_with_its_counts(
    single: BatchedEngine,
) -> None:
    async def scenario() -> None:
        log = Log()
        batch = await single.submit(greedy("Tell me a long story.", "batch", max_tokens=200))
        task = await log.streamed("batch", batch)
        live = await single.submit(greedy("Count to ten.", max_tokens=40))
        live_task = asyncio.create_task(log.drain("live", live))
        # The live request took the only slot: the batch job waits, suspended.
        for _ in range(1000):
            if single.stats().batch_waiting == 1:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the batch job was never preempted")
        batch.cancel()
        (_text, cancelled), (_live_text, done) = await asyncio.gather(task, live_task)
        assert cancelled.finish_reason == "cancelled"
        assert 0 < cancelled.usage.completion_tokens < 200
        assert done.finish_reason == "length" and done.usage.completion_tokens == 40
        stats = single.stats()
        assert stats.slots_busy == stats.queue_length == stats.batch_waiting == 0

    asyncio.run(scenario())


def test_live_traffic_is_not_refused_for_waiting_batch_work(single: BatchedEngine) -> None:
    async def scenario() -> None:
        jobs = [await single.submit(greedy(f"Say {i}.", "batch", max_tokens=60)) for i in range(9)]
        # The batch lane is full (one slot + max_queue 8) ...
        with pytest.raises(QueueFull):
            await single.submit(greedy("One more.", "batch", max_tokens=2))
        # ... yet an interactive request is accepted and served first.
        log = Log()
        _text, done = await log.drain("live", await single.submit(greedy("Hi.", max_tokens=2)))
        assert done.usage.completion_tokens == 2
        for job in jobs:
            job.cancel()
        results: list[Any] = [await Log().drain(f"b{i}", j) for i, j in enumerate(jobs)]
        assert {f.finish_reason for _t, f in results} <= {"cancelled", "length"}
        assert single.stats().slots_busy == 0 and single.stats().queue_length == 0

    asyncio.run(scenario())


def test_single_slot_engine_starts_interactive_before_queued_batch(demo_path: Path) -> None:
    """The fallback engine (chosen where batching cannot serve a model) cannot preempt, but
    its queue lets a live request start before batch requests that came earlier."""
    engine = make_engine(LoadOptions(demo_path, n_ctx=N_CTX), max_queue=4, batched=False)
    assert isinstance(engine, SingleSlotEngine)

    async def scenario() -> None:
        log = Log()
        running = await engine.submit(greedy("Tell me a story.", "batch", max_tokens=200))
        held = await log.streamed("running", running)
        queued = [await engine.submit(greedy(f"Count to {i}.", "batch", 4)) for i in range(2)]
        live = await engine.submit(greedy("Say hi.", max_tokens=4))
        stats = engine.stats()
        assert (stats.slots_busy, stats.batch_busy) == (1, 1), stats
        assert (stats.queue_length, stats.batch_waiting) == (3, 2), stats
        results = await asyncio.gather(
            held, *(log.drain(f"batch{i}", j) for i, j in enumerate(queued)),
            log.drain("live", live),
        )  # fmt: skip
        # Not preempted: the running batch request finished every token it was asked for.
        assert results[0][1].finish_reason == "length"
        assert results[0][1].usage.completion_tokens == 200
        assert [f.usage.completion_tokens for _t, f in results[1:]] == [4, 4, 4]
        firsts = [name for name, what in log.events if what == "first"]
        assert firsts == ["running", "live", "batch0", "batch1"], log.events
        starts = [job.started_at or 0.0 for job in (running, live, *queued)]
        assert 0.0 not in starts and starts == sorted(starts), starts
        after = engine.stats()
        assert (after.slots_busy, after.batch_busy, after.queue_length) == (0, 0, 0)

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


def test_worker_reads_the_priority_header(worker_launcher: Any) -> None:
    worker = worker_launcher.start(
        "--model", str(find_demo_model().path), "--alias", "smol", "--parallel", "1",
        "--n-ctx", "1024", "--max-queue", "2",
    )  # fmt: skip
    url = worker.wait_ready()
    chat = {"messages": [{"role": "user", "content": "Tell me a story."}], "temperature": 0}
    for path, body in (
        ("/v1/chat/completions", chat),
        ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 2}),
    ):
        refused = httpx.post(
            f"{url}{path}", json=body, headers={PRIORITY_HEADER: "urgent"}, timeout=30
        )
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == PRIORITY_HEADER and "urgent" in error["message"]
        ok = httpx.post(
            f"{url}{path}", json={**body, "max_tokens": 2}, headers={PRIORITY_HEADER: "BATCH"},
            timeout=30,
        )  # fmt: skip
        assert ok.status_code == 200, ok.text
    # A batch stream holds the only slot; a live request still gets it at once and finishes
    # while the batch stream goes on, which then completes with every token it was asked for.
    batch_body = {**chat, "max_tokens": 300, "ignore_eos": True, "stream": True,
                  "stream_options": {"include_usage": True}}  # fmt: skip
    with (
        httpx.Client(timeout=120) as client,
        client.stream(
            "POST", f"{url}/v1/chat/completions", json=batch_body,
            headers={PRIORITY_HEADER: "batch"},
        ) as stream,
    ):  # fmt: skip
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")
        health = httpx.get(f"{url}/health", timeout=5).json()
        assert health["slots_busy"] == 1 and health["batch_slots_busy"] == 1
        live = httpx.post(f"{url}/v1/chat/completions", json={**chat, "max_tokens": 4}, timeout=60)
        assert live.status_code == 200 and live.json()["usage"]["completion_tokens"] == 4
        usage = None
        for line in lines:
            if line.startswith("data: {") and '"usage"' in line:
                usage = json.loads(line[6:]).get("usage") or usage
    assert usage is not None and usage["completion_tokens"] == 300
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    assert re.search(r"^herd_worker_preemptions_total [1-9]", metrics, re.M), metrics
    assert httpx.get(f"{url}/health", timeout=5).json()["preemptions_total"] >= 1


def test_interactive_embeddings_go_ahead_of_a_large_batch_call(demo_path: Path) -> None:
    engine = load_embedding_engine(LoadOptions(demo_path, n_ctx=1024), "model", max_queue=2)
    texts = [f"Sentence {i} is about item {i % 9}." for i in range(4 * MAX_SEQS)]

    async def scenario() -> list[str]:
        done: list[str] = []

        async def embed(name: str, inputs: list[list[int]], priority: Priority) -> None:
            vectors = await engine.embed(inputs, priority)
            assert vectors.shape[0] == len(inputs)
            done.append(name)

        tokens = [engine.tokenize(t) for t in texts]
        big = asyncio.create_task(embed("batch", tokens, "batch"))
        await asyncio.sleep(0)  # the batch call is queued (and its first decode started)
        live = asyncio.create_task(embed("live", [tokens[0]], "interactive"))
        await asyncio.gather(big, live)
        return done

    try:
        order = asyncio.run(scenario())
    finally:
        engine.close()
    # 256 batch inputs take four decodes; the live input joins the next decode that starts.
    assert order == ["live", "batch"], order


def test_batch_leaves_one_of_four_slots_free_while_live_requests_run_and_just_after(
    demo_path: Path,
) -> None:
    engine = load_batched_engine(LoadOptions(demo_path, n_ctx=N_CTX, parallel=4), max_queue=8)

    async def until(check: Any) -> None:
        for _ in range(2000):
            if check(engine.stats()):
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"never reached; stats {engine.stats()}")

    async def scenario() -> None:
        log = Log()
        live = await engine.submit(greedy("Count to one hundred.", max_tokens=300))
        live_task = await log.streamed("live", live)
        batch = [
            await engine.submit(greedy(f"Write about hill {i}.", "batch", max_tokens=300))
            for i in range(4)
        ]
        tasks = [asyncio.create_task(log.drain(f"b{i}", j)) for i, j in enumerate(batch)]
        # One live stream: two batch jobs run, one slot stays free for the next live request.
        await until(lambda s: s.batch_busy == 2 and s.batch_waiting == 2)
        assert engine.stats().slots_busy == 3
        before = engine.stats().preemptions
        second = await engine.submit(greedy("Say hi.", max_tokens=4))
        _text, done = await log.drain("second", second)
        assert done.usage.completion_tokens == 4
        assert engine.stats().preemptions == before  # it found the free slot
        # Without live work the batch takes every slot, once none has run for LIVE_QUIET_S
        # (the next live call would preempt it otherwise).
        live.cancel()
        await live_task
        ended = time.perf_counter()
        await until(lambda s: s.batch_busy >= 3)
        assert engine.stats().batch_busy == 3
        await until(lambda s: s.batch_busy == 4 and s.batch_waiting == 0)
        assert time.perf_counter() - ended > 0.5 * LIVE_QUIET_S
        for job in batch:
            job.cancel()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(scenario())
    finally:
        engine.close()
