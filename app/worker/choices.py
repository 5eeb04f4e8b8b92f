"""Several choices (OpenAI's n) for one request: parallel generations sharing the prompt.

The first choice decodes the prompt; the others are submitted once it has (its first event
is out), so the batched engine places each in a free slot with a copy of the prompt's KV
cells (prefix reuse, slots.py) instead of decoding the prompt again. They then decode side
by side in the same batches, each with its own sampler (its own seed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

from app.engine.events import Finished, GenerationEvent, Timings, Usage
from app.engine.protocol import Engine, Generation
from app.engine.requests import GenerationRequest

# Seeds of choices after the first, when the client fixed one: seed, seed + 1, ...
_SEED_MASK = 2**63 - 1


def choice_requests(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """n requests for n choices; with a seed, choice i samples with seed + i."""
    seed = request.sampling.seed
    return [
        request
        if i == 0 or seed is None
        else replace(request, sampling=replace(request.sampling, seed=(seed + i) & _SEED_MASK))
        for i in range(n)
    ]


class ChoiceSet:
    """The generations of one request's choices; cancel() stops them all."""

    def __init__(self, generations: list[Generation]) -> None:
        self.generations = generations

    @classmethod
    async def submit(cls, engine: Engine, requests: list[GenerationRequest]) -> ChoiceSet:
        """Submit choice 0, wait until its prompt is decoded, then the others."""
        first = await engine.submit(requests[0])
        generations = [first]
        try:
            if len(requests) > 1:
                await first.started()
                # All at once, so they are admitted in the same step: their copied prompts'
                # last tokens decode together, and they keep in step to the end.
                others = await asyncio.gather(
                    *(engine.submit(request) for request in requests[1:]),
                    return_exceptions=True,
                )
                failed = [o for o in others if isinstance(o, BaseException)]
                generations.extend(o for o in others if not isinstance(o, BaseException))
                if failed:
                    raise failed[0]
        except BaseException:
            for generation in generations:
                generation.cancel()
            raise
        return cls(generations)

    def cancel(self) -> None:
        for generation in self.generations:
            generation.cancel()

    async def events(self) -> AsyncIterator[tuple[int, GenerationEvent]]:
        """(choice index, event) as they come; each choice ends with its own Finished."""
        if len(self.generations) == 1:
            async for event in self.generations[0].events():
                yield 0, event
            return
        queue: asyncio.Queue[tuple[int, GenerationEvent | BaseException | None]] = asyncio.Queue()

        async def pump(index: int, generation: Generation) -> None:
            try:
                async for event in generation.events():
                    queue.put_nowait((index, event))
            except Exception as exc:  # GenerationFailed: re-raised to the reader
                queue.put_nowait((index, exc))
            queue.put_nowait((index, None))

        pumps = [asyncio.create_task(pump(i, g)) for i, g in enumerate(self.generations)]
        try:
            running = len(pumps)
            while running:
                index, item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield index, item
        finally:
            for task in pumps:
                task.cancel()
            for task in pumps:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def combined(finished: list[Finished]) -> Finished:
    """One request's accounting over its choices: the prompt counted once, completions summed,
    times from the first start to the last end, speed the sum of the choices' (in parallel)."""
    first = finished[0]
    if len(finished) == 1:
        return first
    slowest = max(finished, key=lambda f: f.timings.total_ms)
    usage = Usage(
        prompt_tokens=first.usage.prompt_tokens,
        completion_tokens=sum(f.usage.completion_tokens for f in finished),
        cached_tokens=first.usage.cached_tokens,
        drafted_tokens=sum(f.usage.drafted_tokens for f in finished),
        accepted_tokens=sum(f.usage.accepted_tokens for f in finished),
    )
    timings = Timings(
        queue_ms=first.timings.queue_ms,
        ttft_ms=first.timings.ttft_ms,
        prompt_ms=first.timings.prompt_ms,
        total_ms=slowest.timings.total_ms,
        tokens_per_second=sum(f.timings.tokens_per_second for f in finished),
        time_per_output_token_ms=slowest.timings.time_per_output_token_ms,
    )
    return Finished(finish_reason=first.finish_reason, usage=usage, timings=timings)
