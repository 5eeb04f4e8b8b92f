"""The queue of requests waiting for a slot: interactive ones always leave before batch ones."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from app.engine.requests import PRIORITIES, Priority


class Prioritized(Protocol):
    @property
    def priority(self) -> Priority: ...


J = TypeVar("J", bound=Prioritized)


class WaitingQueue(Generic[J]):
    """One FIFO lane per priority; pop() serves the interactive lane first.

    Not thread-safe: the engine holds its own lock around every call.
    """

    def __init__(self) -> None:
        self._lanes: dict[Priority, deque[J]] = {p: deque() for p in PRIORITIES}

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def __bool__(self) -> bool:
        return any(self._lanes.values())

    def __iter__(self) -> Iterator[J]:
        for p in PRIORITIES:
            yield from self._lanes[p]

    def count(self, priority: Priority) -> int:
        return len(self._lanes[priority])

    def append(self, job: J) -> None:
        self._lanes[job.priority].append(job)

    def put_back(self, job: J) -> None:
        """Queue job at the head of its lane: a preempted job resumes before newer ones, so
        the oldest batch work finishes first and none waits behind work that came later."""
        self._lanes[job.priority].appendleft(job)

    def pop(self, priority: Priority | None = None) -> J | None:
        """The next job to start (interactive first, then batch; or the next of priority),
        or None when there is none."""
        for p in PRIORITIES if priority is None else (priority,):
            if self._lanes[p]:
                return self._lanes[p].popleft()
        return None

    def remove(self, job: J) -> bool:
        """Take job out if it is waiting; False if it is not (started or gone)."""
        try:
            self._lanes[job.priority].remove(job)
        except ValueError:
            return False
        return True

    def clear(self) -> list[J]:
        """Empty the queue; returns what was in it."""
        jobs = list(self)
        for lane in self._lanes.values():
            lane.clear()
        return jobs
