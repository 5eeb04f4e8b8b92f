"""The engine on real llama.cpp with the SmolLM2 demo model: load, template, stream, queue,
cancel, and llama.cpp's own reason for a model it refuses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.engine.errors import ModelLoadError, PromptTooLong, QueueFull
from app.engine.events import Finished, TextDelta
from app.engine.loader import LoadOptions, layers_offloaded, load_model
from app.engine.requests import ChatMessage, GenerationRequest, SamplingParams
from app.engine.single_slot import SingleSlotEngine, SlotJob, load_engine
from app.engine.stop_strings import StopMatcher
from app.store.demo import find_demo_model

N_CTX = 512


@pytest.fixture(scope="module")
def demo_path() -> Path:
    return find_demo_model().path


@pytest.fixture
def engine(demo_path: Path) -> Iterator[SingleSlotEngine]:
    eng = load_engine(LoadOptions(demo_path, n_ctx=N_CTX, n_gpu_layers=-1), max_queue=1)
    yield eng
    eng.close()


def chat(text: str, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage("user", text),),
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
    )


def long_run(max_tokens: int = 400) -> GenerationRequest:
    return GenerationRequest(
        prompt="Once upon a time",
        sampling=SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.7),
    )


async def drain(job: SlotJob) -> tuple[str, Finished]:
    texts = []
    async for event in job.events():
        if isinstance(event, TextDelta):
            texts.append(event.text)
        else:
            return "".join(texts), event
    raise AssertionError("no Finished event")


def test_stop_matcher_holds_back_a_possible_stop_and_cuts_at_it() -> None:
    m = StopMatcher(("END",))
    assert m.feed("abc E") == ("abc ", False)  # "E" may begin "END": held back
    assert m.feed("N") == ("", False)
    assert m.feed("Dxyz") == ("", True)
    m = StopMatcher(("END",))
    assert m.feed("abE") == ("ab", False)
    assert m.feed("x") == ("Ex", False)  # not a stop after all: released
    assert m.flush() == ""


def test_layers_offloaded_counts_the_output_layer_and_nothing_on_cpu() -> None:
    assert layers_offloaded(-1, 30, supported=True) == 31
    assert layers_offloaded(12, 30, supported=True) == 12
    assert layers_offloaded(99, 30, supported=True) == 31
    assert layers_offloaded(-1, 30, supported=False) == 0


def test_load_reports_offload_and_context(engine: SingleSlotEngine) -> None:
    info = engine.info
    assert info.n_ctx == N_CTX
    assert info.n_layer == 30  # SmolLM2-135M
    assert info.n_ctx_train == 8192
    assert info.has_chat_template
    assert info.n_gpu_layers_requested == -1
    expected = layers_offloaded(-1, 30, info.gpu_offload_supported)
    assert info.n_gpu_layers_offloaded == expected


def test_refused_model_fails_with_llama_cpp_reason(tiny_gguf: Callable[..., Path]) -> None:
    # The tiny GGUF is well-formed but its fake tokenizer has no merges: llama.cpp refuses it.
    with pytest.raises(ModelLoadError) as refused:
        load_model(LoadOptions(tiny_gguf()))
    assert "tokenizer merges" in str(refused.value)


def test_chat_uses_the_gguf_template_and_honours_sampling(engine: SingleSlotEngine) -> None:
    async def run() -> None:
        job = await engine.submit(chat("Name a color.", temperature=0.9, seed=7, max_tokens=12))
        prompt = engine._model.llama.detokenize(job.prepared.tokens, special=True).decode()
        assert "<|im_start|>user\nName a color.<|im_end|>" in prompt  # SmolLM2's ChatML
        assert prompt.endswith("<|im_start|>assistant\n")
        first, done = await drain(job)
        assert done.usage.prompt_tokens == len(job.prepared.tokens)
        assert 0 < done.usage.completion_tokens <= 12
        again, _ = await drain(
            await engine.submit(chat("Name a color.", temperature=0.9, seed=7, max_tokens=12))
        )
        assert again == first  # same seed, same sample

    asyncio.run(run())


def test_stop_strings_end_the_text_before_them(engine: SingleSlotEngine) -> None:
    async def run() -> None:
        greedy = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
        full, _ = await drain(
            await engine.submit(GenerationRequest(prompt="The capital of France", sampling=greedy))
        )
        words = full.split()
        assert len(words) > 3, full
        stop = words[2]
        cut = full[: full.index(stop)]
        stopped = SamplingParams(temperature=0, max_tokens=30, stop=(stop,))
        text, done = await drain(
            await engine.submit(GenerationRequest(prompt="The capital of France", sampling=stopped))
        )
        assert (text, done.finish_reason) == (cut, "stop")

    asyncio.run(run())


def test_second_request_waits_for_the_slot_and_a_full_queue_refuses(
    engine: SingleSlotEngine,
) -> None:
    async def run() -> None:
        first = await engine.submit(long_run(60))
        second = await engine.submit(long_run(5))
        assert engine.stats().slots_busy == 1 and engine.stats().queue_length == 1
        with pytest.raises(QueueFull) as full:
            await engine.submit(long_run(5))
        assert full.value.retry_after_s >= 1
        (_, a), (_, b) = await asyncio.gather(drain(first), drain(second))
        assert a.usage.completion_tokens == 60 and b.usage.completion_tokens == 5
        # The second waited for the whole first generation.
        assert b.timings.queue_ms >= a.timings.total_ms - a.timings.queue_ms - 50
        assert b.timings.ttft_ms is not None and b.timings.ttft_ms >= b.timings.queue_ms
        assert engine.stats().slots_busy == 0

    asyncio.run(run())


def test_cancel_stops_running_and_waiting_generations(engine: SingleSlotEngine) -> None:
    async def run() -> None:
        running = await engine.submit(long_run(N_CTX - 10))
        waiting = await engine.submit(long_run(5))
        events = running.events()
        assert isinstance(await anext(events), TextDelta)
        waiting.cancel()
        _, left = await drain(waiting)
        assert left.finish_reason == "cancelled" and left.usage.completion_tokens == 0
        started = time.perf_counter()
        running.cancel()
        async for event in events:
            last = event
        assert isinstance(last, Finished) and last.finish_reason == "cancelled"
        assert last.usage.completion_tokens < N_CTX - 10
        assert time.perf_counter() - started < 1.0
        # The slot is free again: a new request runs at once.
        _, after = await drain(await engine.submit(long_run(3)))
        assert after.usage.completion_tokens == 3 and after.timings.queue_ms < 100

    asyncio.run(run())


def test_prompt_longer_than_the_context_is_refused_at_submit(engine: SingleSlotEngine) -> None:
    async def run() -> None:
        with pytest.raises(PromptTooLong) as refused:
            await engine.submit(GenerationRequest(prompt="hello " * 2000))
        assert refused.value.n_ctx == N_CTX and refused.value.prompt_tokens > N_CTX
        assert engine.stats().queue_length == 0

    asyncio.run(run())
