"""Events the batched scheduler produced in one step, handed to their event loops together.

Every loop.call_soon_threadsafe wakes the event loop (a write to its self-pipe) and takes the
GIL from llama.cpp's side; with 16 streams that was 16 wake-ups per decode step. Collected
here, a step costs one call per event loop, whatever the number of streams.
"""

from __future__ import annotations

import asyncio

from app.engine.events import GenerationEvent
from app.engine.job import JobChannel

Delivery = list[tuple[JobChannel, GenerationEvent | BaseException]]


def _deliver(items: Delivery) -> None:
    """On the event loop: put each event into its job's queue, in production order."""
    for job, item in items:
        job.put(item)


class Outbox:
    """Collects (job, event) pairs on the scheduler thread; flush() sends them."""

    def __init__(self) -> None:
        self._items: Delivery = []

    def add(self, job: JobChannel, item: GenerationEvent | BaseException) -> None:
        self._items.append((job, item))

    def flush(self) -> None:
        if not self._items:
            return
        items, self._items = self._items, []
        loops: dict[asyncio.AbstractEventLoop, Delivery] = {}
        for pair in items:
            loops.setdefault(pair[0].loop, []).append(pair)
        for loop, delivery in loops.items():
            try:
                loop.call_soon_threadsafe(_deliver, delivery)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for job, _item in delivery:
                    job.cancel_requested.set()
