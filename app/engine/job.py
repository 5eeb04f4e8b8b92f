"""What both engines hand back for a submitted request: its events and its cancel flag."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from app.engine.events import Finished, GenerationEvent
from app.engine.loader import PreparedPrompt
from app.engine.requests import SamplingParams

# Weight of the newest generation in the moving averages of speed and duration.
EWMA_WEIGHT = 0.3
MAX_RETRY_AFTER_S = 60


def elapsed_ms(start: float, end: float) -> float:
    return (end - start) * 1000.0


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
    ) -> None:
        self.prepared = prepared
        self.sampling = sampling
        self.loop = loop
        self.submitted_at = submitted_at
        self.cancel_requested = threading.Event()
        self._queue: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()

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

    def put(self, item: GenerationEvent | BaseException) -> None:
        """Deliver an event; on the loop's thread."""
        self._queue.put_nowait(item)

    def push(self, item: GenerationEvent | BaseException) -> None:
        """Deliver an event from any thread."""
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel_requested.set()
