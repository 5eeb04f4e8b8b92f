"""What both engines hand back for a submitted request: its events and its cancel flag."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.engine.events import Finished, FinishReason, GenerationEvent, Timings, Usage
from app.engine.loader import PreparedPrompt
from app.engine.requests import Priority, SamplingParams

# Weight of the newest generation in the moving averages of speed and duration.
EWMA_WEIGHT = 0.3
MAX_RETRY_AFTER_S = 60


def elapsed_ms(start: float, end: float) -> float:
    return (end - start) * 1000.0


def moving_average(old: float | None, new: float, weight: float = EWMA_WEIGHT) -> float:
    """new blended into old with weight; new itself when there is no old yet."""
    return new if old is None else old + weight * (new - old)


@dataclass
class JobSpeeds:
    """An engine's moving averages over its finished jobs: seconds per job (for Retry-After)
    and tokens per second (for stats)."""

    job_seconds: float = 1.0
    tokens_per_second: float | None = None

    def record(self, finished: Finished) -> None:
        self.job_seconds = moving_average(self.job_seconds, finished.timings.total_ms / 1000)
        tps = finished.timings.tokens_per_second
        if finished.usage.completion_tokens > 1 and tps > 0:
            self.tokens_per_second = moving_average(self.tokens_per_second, tps)


class JobChannel:
    """A submitted request: prompt, sampling, clock, cancel flag and its event queue.

    Events are produced on the engine's thread and consumed on the caller's event loop;
    subclasses add how a cancel reaches their engine.
    """

    def __init__(
        self,
        prepared: PreparedPrompt,
        sampling: SamplingParams,
        loop: asyncio.AbstractEventLoop,
        submitted_at: float,
        priority: Priority = "interactive",
    ) -> None:
        self.prepared = prepared
        self.priority: Priority = priority
        self.sampling = sampling
        self.loop = loop
        self.submitted_at = submitted_at
        self.cancel_requested = threading.Event()
        self._queue: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()
        # Set with the first event: the prompt is decoded (its KV can be shared).
        self._started = asyncio.Event()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prepared.tokens)

    async def events(self) -> AsyncIterator[GenerationEvent]:
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return

    def finished(
        self,
        reason: FinishReason,
        completion_tokens: int,
        started_at: float,
        first_at: float | None,
        last_at: float | None,
        ended_at: float,
        cached_tokens: int = 0,
        drafted_tokens: int = 0,
        accepted_tokens: int = 0,
    ) -> Finished:
        """The closing event: usage and timings from the job's clock readings."""
        decode_s = (last_at - first_at) if first_at is not None and last_at is not None else 0.0
        if completion_tokens > 1 and decode_s > 0:
            tps = (completion_tokens - 1) / decode_s
            tpot_ms: float | None = decode_s * 1000 / (completion_tokens - 1)
        else:
            total_s = ended_at - started_at
            tps = completion_tokens / total_s if total_s > 0 else 0.0
            tpot_ms = None
        return Finished(
            finish_reason=reason,
            usage=Usage(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=completion_tokens,
                cached_tokens=cached_tokens,
                drafted_tokens=drafted_tokens,
                accepted_tokens=accepted_tokens,
            ),
            timings=Timings(
                queue_ms=elapsed_ms(self.submitted_at, started_at),
                ttft_ms=elapsed_ms(self.submitted_at, first_at) if first_at is not None else None,
                prompt_ms=elapsed_ms(started_at, first_at) if first_at is not None else None,
                total_ms=elapsed_ms(self.submitted_at, ended_at),
                tokens_per_second=tps,
                time_per_output_token_ms=tpot_ms,
            ),
        )

    async def started(self) -> None:
        """Until the first event: the prompt has been decoded, or the job has ended."""
        await self._started.wait()

    def put(self, item: GenerationEvent | BaseException) -> None:
        """Deliver an event; on the loop's thread."""
        self._queue.put_nowait(item)
        self._started.set()

    def push(self, item: GenerationEvent | BaseException) -> None:
        """Deliver an event from any thread."""
        try:
            self.loop.call_soon_threadsafe(self.put, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel_requested.set()
