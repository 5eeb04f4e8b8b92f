"""The engine interface the worker serves: submit, stream events, cancel.

Today's implementation runs one generation at a time (single_slot.py); continuous batching
across several slots will sit behind the same interface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from app.engine.events import GenerationEvent
from app.engine.requests import GenerationRequest


@dataclass(frozen=True)
class EngineInfo:
    """What was loaded and how: reported once at start-up."""

    model_path: str
    n_ctx: int
    n_ctx_train: int
    n_layer: int
    n_gpu_layers_requested: int
    n_gpu_layers_offloaded: int
    gpu_offload_supported: bool
    has_chat_template: bool
    slots_total: int
    n_threads: int
    load_ms: float


@dataclass(frozen=True)
class EngineStats:
    """Live load, read by heartbeats, /health and /metrics."""

    slots_total: int
    slots_busy: int
    queue_length: int
    max_queue: int
    # Recent decode rate (moving average over finished generations); None before the first.
    tokens_per_second: float | None
    # Since start: prompt tokens of started generations, and how many of them came from a
    # reused KV prefix instead of being decoded (prefix reuse).
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    # Of slots_busy and queue_length, how many are batch requests (the rest are interactive);
    # and how often a batch request gave its slot to an interactive one, since start.
    batch_busy: int = 0
    batch_waiting: int = 0
    preemptions: int = 0

    @property
    def prefix_hit_rate(self) -> float | None:
        """Share of prompt tokens served from the prefix cache; None before any prompt."""
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else None


class Generation(Protocol):
    """One submitted request."""

    @property
    def prompt_tokens(self) -> int: ...

    def events(self) -> AsyncIterator[GenerationEvent]:
        """Text deltas, then exactly one Finished; raises GenerationFailed on a llama.cpp error."""
        ...

    def cancel(self) -> None:
        """Stop at the next token (or leave the queue) and free the slot; idempotent."""
        ...

    async def started(self) -> None:
        """Until the prompt is decoded (the first event is out) or the generation ended."""
        ...


class Engine(Protocol):
    """A loaded model that serves generations."""

    @property
    def info(self) -> EngineInfo: ...

    def stats(self) -> EngineStats: ...

    async def submit(self, request: GenerationRequest) -> Generation:
        """Accept a request or refuse it now: QueueFull, PromptTooLong, BadRequest, EngineClosed."""
        ...

    def close(self) -> None:
        """Cancel everything, wait for the running generation to stop, free the model."""
        ...
