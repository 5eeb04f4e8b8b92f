"""A request of the batched engine, as its caller holds it and as the scheduler tracks it."""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.engine.events import Finished, FinishReason, TokenLogprob
from app.engine.job import JobChannel
from app.engine.loader import PreparedPrompt
from app.engine.lookup_drafts import DraftPacer, NgramIndex
from app.engine.requests import Priority, SamplingParams
from app.engine.sampler_chain import SamplerChain
from app.engine.slots import Slot
from app.engine.stop_strings import StopMatcher


class BatchJob(JobChannel):
    """A submitted request of the batched engine."""

    def __init__(
        self,
        withdraw: Callable[[BatchJob], None],
        prepared: PreparedPrompt,
        sampling: SamplingParams,
        loop: asyncio.AbstractEventLoop,
        submitted_at: float,
        gbnf: str | None = None,
        priority: Priority = "interactive",
    ) -> None:
        super().__init__(prepared, sampling, loop, submitted_at, priority)
        # How a cancel reaches the engine (a waiting job leaves its queue at once).
        self._withdraw = withdraw
        # The grammar the output must follow (checked by GrammarCache), or None.
        self.gbnf = gbnf
        # While preempted and waiting to resume: its state in the scheduler; else None.
        self.suspended: Running | None = None

    def cancel(self) -> None:
        if not self.cancel_requested.is_set():
            self.cancel_requested.set()
            self._withdraw(self)


@dataclass
class Running:
    """A job in a slot, as the scheduler thread tracks it."""

    job: BatchJob
    slot: Slot
    sampler: SamplerChain
    budget: int
    started_at: float
    cached_tokens: int
    # Prompt tokens whose KV is computed; prefill is done when it reaches len(prompt).
    prefilled: int
    stops: StopMatcher
    # What the slot's KV must hold before the job samples: the prompt; after a preemption,
    # the prompt and every token generated and decoded before it.
    tokens: list[int]
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    # Sampled but not yet decoded: goes into the next batch.
    next_token: int | None = None
    completion_tokens: int = 0
    first_at: float | None = None
    last_at: float | None = None
    # Batch row whose logits this job samples after the current decode, or None.
    row: int | None = None
    # Its prompt chunks may share a decode with other prompts' (see prompt_chunks.packable).
    pack: bool = True
    # Log probabilities of tokens sampled but not yet sent (only when asked for).
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # Prompt-lookup drafting (lookup_drafts.py); lookup is None when r does not draft.
    # drafts: guessed tokens decoded after next_token in the current step, to be verified.
    lookup: NgramIndex | None = None
    pacer: DraftPacer = field(default_factory=DraftPacer)
    drafts: list[int] = field(default_factory=list)
    # Since the start: draft tokens decoded, and those the sampler confirmed.
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    def row_or_fail(self) -> int:
        assert self.row is not None, "sampled without logits"
        return self.row


def finished_event(r: Running, reason: FinishReason, now: float) -> Finished:
    """The Finished event of r, with its counts and timings so far."""
    return r.job.finished(
        reason,
        r.completion_tokens,
        r.started_at,
        r.first_at,
        r.last_at,
        now,
        cached_tokens=r.cached_tokens,
        drafted_tokens=r.drafted_tokens,
        accepted_tokens=r.accepted_tokens,
    )


def withdrawn(job: BatchJob, suspended: Running | None) -> Finished:
    """The Finished of a job cancelled while waiting (a preempted one keeps its counts)."""
    now = time.perf_counter()
    if suspended is None:
        return job.finished("cancelled", 0, now, None, None, now)
    suspended.sampler.close()
    return finished_event(suspended, "cancelled", now)


def seq_of(r: Running) -> int:
    """r's sequence id: the sort key that keeps a batch in slot order."""
    return r.slot.seq_id


def is_generating(r: Running) -> bool:
    """Whether r's KV is complete and its next token waits to be decoded."""
    return r.next_token is not None and r.prefilled == len(r.tokens)


def steps_left(r: Running) -> int:
    """Decode steps r has at most before it ends (prompt chunks count as one each)."""
    return r.budget - r.completion_tokens + (r.prefilled < len(r.tokens))


def wants_logits(r: Running, end: int) -> bool:
    """Whether the prompt chunk of r ending at end needs logits: it is the last one and r
    has no token sampled yet (a resumed job has its next token already)."""
    return end == len(r.tokens) and r.next_token is None
