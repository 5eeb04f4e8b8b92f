"""Continuous batching: many generations share one llama context and one decode per step.

One scheduler thread owns the context. Each step it builds one llama_batch holding the next
token of every generating slot plus a bounded chunk of waiting prompt tokens, calls
llama_decode once, then samples every slot that produced logits with that request's own
native sampler chain. Requests join between steps; a finished, stopped or cancelled request
gives its slot back at once, keeping its KV cells as a prefix cache for the next prompt.

Threads: submit(), cancel() and stats() run on the event loop; everything that touches
llama.cpp runs on the scheduler thread. They share only the waiting queue (under a
condition) and each job's cancel flag; events go back through loop.call_soon_threadsafe,
collected per step (outbox.py) so the loop wakes once per step, not once per token.

Priority classes (requests.Priority): admission.py holds the rules for who gets a slot and
which batch job yields to live traffic, and why. Within a step the order serves the same end:
1. live prompt chunks that cannot share a decode exactly (prompt_chunks.packable: 64+ rows,
   or past position 256) are decoded first, whole, and their first tokens sent;
2. then ONE decode holds the next token of every running stream (live and batch, with its
   prompt-lookup drafts: drafting.py) and every prompt chunk that can share it exactly, live
   ones first, then batch work within a budget measured from step costs (step_costs.py:
   about one plain step's worth, so a live request arriving mid-step waits for at most one
   step of batch work);
3. only batch prompt chunks that cannot share a decode come after, one per step under live
   load, cut to the budget where that is exact.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from typing import Any

import llama_cpp

from app.engine.admission import admit
from app.engine.batch_context import BatchContext
from app.engine.batch_decode import Chunk, StepDecoder
from app.engine.batch_job import (
    BatchJob,
    Running,
    finished_event,
    is_generating,
    steps_left,
    withdrawn,
)
from app.engine.drafting import plan_drafts, verify
from app.engine.errors import EngineClosed, GenerationFailed, PromptTooLong, QueueFull
from app.engine.events import FinishReason, TextDelta
from app.engine.grammar import GrammarCache
from app.engine.job import MAX_RETRY_AFTER_S, JobSpeeds
from app.engine.loader import LoadedModel, PreparedPrompt
from app.engine.logprobs import token_logprob
from app.engine.lookup_drafts import MAX_DRAFT
from app.engine.outbox import Outbox
from app.engine.prefix_snapshots import PrefixSnapshots
from app.engine.prompt_chunks import pack, packable, step_chunks
from app.engine.protocol import EngineInfo, EngineStats
from app.engine.requests import GenerationRequest
from app.engine.sampler_chain import SamplerChain, check_sampling
from app.engine.slot_layout import MIN_STEPS_LEFT_TO_MOVE, compaction
from app.engine.slots import Placement, Slot, place
from app.engine.stop_strings import StopMatcher
from app.engine.token_pieces import TokenPieces
from app.engine.waiting import WaitingQueue

logger = logging.getLogger(__name__)


class BatchedEngine:
    """An Engine with several slots decoded together; see the module docstring."""

    def __init__(
        self,
        model: LoadedModel,
        context: BatchContext,
        info: EngineInfo,
        max_queue: int = 16,
        snapshots: PrefixSnapshots | None = None,
        max_draft: int = MAX_DRAFT,
    ) -> None:
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self._model = model
        self._context = context
        self._info = info
        self._max_queue = max_queue
        self._shape = context.shape
        self._slots = [Slot(seq_id=i) for i in range(self._shape.slots)]
        # Hot prefixes saved to disk and restored from it (prefix_snapshots.py).
        self._snapshots = snapshots or PrefixSnapshots()
        self._snapshots.adopt(self._slots)
        self._vocab: Any = model.llama._model.vocab
        self._grammars = GrammarCache(self._vocab)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._piece = TokenPieces(self._vocab)
        self._waiting: WaitingQueue[BatchJob] = WaitingQueue()
        self._wake = threading.Condition()
        self._closed = False
        self._busy = 0
        # Of _busy, the slots held by batch jobs; and batch jobs preempted since start.
        self._busy_batch = 0
        self.preemptions = 0
        # Running sequences moved to close a gap in the busy slots (slot_layout.py).
        self.slot_moves = 0
        # When live work was last running or admitted (scheduler thread only).
        self._live_at = -math.inf
        self._speeds = JobSpeeds()
        # Written by the scheduler thread only; stats() reads them (ints: no torn reads).
        self._prompt_tokens = 0
        self._cached_prompt_tokens = 0
        self._outbox = Outbox()
        self.max_draft = max_draft  # prompt-lookup drafts per job and step; 0: none
        self._decoder = StepDecoder(context, self._fail)
        self._thread = threading.Thread(target=self._run, name="herd-batch", daemon=True)
        self._thread.start()

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def packed_decodes(self) -> int:
        """Decodes that held several prompts' chunks (tests read it to know packing happened)."""
        return self._decoder.packed_decodes

    def stats(self) -> EngineStats:
        with self._wake:
            waiting = len(self._waiting)
            batch_waiting = self._waiting.count("batch")
        return EngineStats(
            slots_total=self._shape.slots,
            slots_busy=self._busy,
            queue_length=waiting,
            max_queue=self._max_queue,
            tokens_per_second=self._speeds.tokens_per_second,
            prompt_tokens=self._prompt_tokens,
            cached_prompt_tokens=self._cached_prompt_tokens,
            batch_busy=self._busy_batch,
            batch_waiting=batch_waiting,
            preemptions=self.preemptions,
        )

    async def submit(self, request: GenerationRequest) -> BatchJob:
        if self._closed:
            raise EngineClosed("the worker is shutting down")
        loop = asyncio.get_running_loop()
        submitted_at = time.perf_counter()
        # Templating, tokenizing and grammar checks read only the vocabulary: safe beside
        # the decode thread.
        prepared, gbnf = await loop.run_in_executor(None, self._prepare, request)
        n_ctx = self._shape.n_ctx_slot
        max_tokens = request.sampling.max_tokens
        if max_tokens is not None and len(prepared.tokens) + max_tokens > n_ctx:
            raise PromptTooLong(len(prepared.tokens), n_ctx, max_tokens)
        priority = request.priority
        job = BatchJob(
            self._withdraw, prepared, request.sampling, loop, submitted_at, gbnf, priority
        )
        with self._wake:
            if self._closed:
                raise EngineClosed("the worker is shutting down")
            if priority == "interactive":
                # Slots held by batch jobs count as free (they are preempted), and waiting
                # batch jobs take no queue places from live traffic.
                free = self._shape.slots - (self._busy - self._busy_batch)
                ahead = self._waiting.count("interactive")
            else:
                free = self._shape.slots - self._busy
                ahead = len(self._waiting)
            if ahead >= free + self._max_queue:
                queued = max(0, ahead - free)
                raise QueueFull(queued, self._retry_after_s(queued))
            self._waiting.append(job)
            self._wake.notify()
        return job

    def _prepare(self, request: GenerationRequest) -> tuple[PreparedPrompt, str | None]:
        """Tokens and checked grammar of a request; BadRequest before it is queued."""
        check_sampling(request.sampling, self._vocab)
        constraint = request.constraint
        gbnf = None if constraint is None else self._grammars.gbnf(constraint)
        return self._model.prepare(request), gbnf

    def _retry_after_s(self, queued: int) -> int:
        per_slot = (queued + 1) * self._speeds.job_seconds / self._shape.slots
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(per_slot)))

    def _withdraw(self, job: BatchJob) -> None:
        """A cancelled job still waiting leaves the queue now; a running one at the next step."""
        with self._wake:
            if not self._waiting.remove(job):
                self._wake.notify()
                return
            # Out of the queue the scheduler can no longer resume it: its state is ours.
            suspended, job.suspended = job.suspended, None
        job.push(withdrawn(job, suspended))

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        self._snapshots.close(self._slots)
        self._context.close()
        self._model.close()

    # Everything below runs on the scheduler thread.

    def _run(self) -> None:
        running: list[Running] = []
        try:
            while True:
                with self._wake:
                    while not self._closed and not self._waiting and not running:
                        self._wake.wait()
                    if self._closed:
                        break
                    admitted, preempted = self._admit(running)
                if preempted:
                    gone = set(map(id, preempted))
                    running = [r for r in running if id(r) not in gone]
                for job in admitted:
                    running.append(self._start(job))
                self._compact(running)
                running = self._step_once(running)
                self._outbox.flush()
        except Exception:  # a bug here must not leave callers waiting forever
            logger.exception("the batch scheduler failed")
            for r in running:
                self._outbox.add(r.job, GenerationFailed("the batch scheduler failed"))
            running = []
        finally:
            self._shut_down(running)
            self._outbox.flush()

    def _shut_down(self, running: list[Running]) -> None:
        now = time.perf_counter()
        with self._wake:
            self._closed = True
            waiting = self._waiting.clear()
        for job in waiting:
            suspended, job.suspended = job.suspended, None
            self._outbox.add(job, withdrawn(job, suspended))
        for r in running:
            self._finish(r, "cancelled", now)
        self._busy = 0
        self._busy_batch = 0

    def _admit(self, running: list[Running]) -> tuple[list[BatchJob], list[Running]]:
        """Take waiting jobs for the free slots, preempting batch jobs for interactive ones
        (see admission.py; the lock is held); returns (admitted, preempted)."""
        decided = admit(self._waiting, running, self._shape.slots, self._live_at)
        admitted, preempted = decided.admitted, decided.preempted
        self._live_at = decided.live_at
        self.preemptions += len(preempted)
        # Counted busy before they leave the lock, so submit() never sees them nowhere.
        self._busy = len(running) - len(preempted) + len(admitted)
        self._busy_batch = sum(r.job.priority == "batch" for r in running) - len(preempted)
        self._busy_batch += sum(job.priority == "batch" for job in admitted)
        return admitted, preempted

    def _start(self, job: BatchJob) -> Running:
        if job.suspended is not None:
            return self._resume(job)
        prompt = job.prepared.tokens
        placement = place(prompt, self._slots, self._shape.n_batch)
        assert placement is not None, "admitted beyond the free slots"
        slot = self._claim(placement)
        sampler = SamplerChain(job.sampling, self._vocab, job.gbnf, self._shape.n_ctx_slot)
        sampler.accept_prompt(prompt)
        room = self._shape.n_ctx_slot - len(prompt)
        max_tokens = job.sampling.max_tokens
        self._prompt_tokens += len(prompt)
        self._cached_prompt_tokens += placement.reused
        return Running(
            job=job,
            slot=slot,
            sampler=sampler,
            budget=room if max_tokens is None else min(max_tokens, room),
            started_at=time.perf_counter(),
            cached_tokens=placement.reused,
            prefilled=placement.reused,
            stops=StopMatcher(job.sampling.stop + job.prepared.stop),
            tokens=prompt,
        )

    def _resume(self, job: BatchJob) -> Running:
        """Put a preempted job back in a slot; its KV is rebuilt from r.tokens by prefill."""
        r, job.suspended = job.suspended, None
        assert r is not None
        placement = place(r.tokens, self._slots, self._shape.n_batch)
        assert placement is not None, "admitted beyond the free slots"
        r.slot = self._claim(placement)
        r.prefilled = placement.reused
        r.pack = True
        return r

    def _compact(self, running: list[Running]) -> None:
        """Move one running sequence into a gap in the busy slots (see slot_layout.py)."""
        busy = {s.seq_id for s in self._slots if s.busy}
        movable = {r.slot.seq_id for r in running if steps_left(r) >= MIN_STEPS_LEFT_TO_MOVE}
        move = compaction(busy, movable, len(self._slots))
        if move is None:
            return
        r = next(r for r in running if r.slot.seq_id == move.source)
        source, target = self._slots[move.source], self._slots[move.target]
        # The source keeps its cells: a copy, and a prefix cache for the next prompt.
        self._context.copy_prefix(source.seq_id, target.seq_id, len(source.kv_tokens))
        target.kv_tokens = list(source.kv_tokens)
        target.busy, source.busy = True, False
        self._snapshots.moved(source, target)
        r.slot = target
        self.slot_moves += 1

    def _claim(self, placement: Placement) -> Slot:
        slot, reused = placement.slot, placement.reused
        if placement.copy_from is not None:
            self._context.copy_prefix(placement.copy_from.seq_id, slot.seq_id, reused)
            slot.kv_tokens = placement.copy_from.kv_tokens[:reused]
        else:
            self._context.forget(slot.seq_id, reused)
            del slot.kv_tokens[reused:]
        self._snapshots.claimed(slot, placement)
        slot.busy = True
        return slot

    def _step_once(self, running: list[Running]) -> list[Running]:
        """One step (see the module docstring); returns the jobs still running."""
        now = time.perf_counter()
        still: list[Running] = []
        for r in running:
            if r.job.cancel_requested.is_set():
                self._finish(r, "cancelled", now)
            else:
                still.append(r)
        live = set(map(id, still))
        step = self._shape.n_batch
        prefilling = [r for r in still if not is_generating(r)]
        urgent = [r for r in prefilling if r.job.priority == "interactive"]
        # Live prompts whose chunks cannot share a decode exactly (prompt_chunks.packable)
        # go first, whole and alone: a person waits for the first token, while a running
        # stream's next token only waits one prompt chunk longer.
        room = self._prefill_step([r for r in urgent if not packable(r, step)], live, step)
        self._outbox.flush()  # first tokens out before any other work of the step
        with self._wake:
            live_load = self._waiting.count("interactive") > 0
        live_load = live_load or any(r.job.priority == "interactive" for r in still)
        batch = [r for r in prefilling if r.job.priority == "batch" and id(r) in live]
        batch_room = min(room, self._decoder.costs.batch_tokens(live_load))
        # Then one decode: every stream's next token first, then the prompt chunks that can
        # share it in what is left, live ones before batch work within batch_room.
        generating = [r for r in still if is_generating(r) and id(r) in live]
        waiting = [r for r in urgent if id(r) in live and r.prefilled < len(r.tokens)]
        chunks, batch_room = step_chunks(waiting, batch, room - len(generating), batch_room, step)
        self._mixed_step(generating, chunks, live)
        # Batch prompt chunks that cannot share a decode: with live work in the slots or the
        # queue at most one, cut to what is left of the budget where cutting is exact.
        outside = live - {id(r) for r, _end in chunks}  # a chunk in the decode is enough
        rest = [r for r in batch if id(r) in outside and r.prefilled < len(r.tokens)]
        if batch_room > 0 and rest:
            self._prefill_step(rest[:1] if live_load else rest, live, batch_room, cut=True)
        return [r for r in still if id(r) in live]

    def _mixed_step(self, generating: list[Running], chunks: list[Chunk], live: set[int]) -> None:
        """Decode the step's one mixed batch and sample every row with logits; drops from live
        the ids of the jobs that finished or failed."""
        if not generating and not chunks:
            return
        taken = sum(end - r.prefilled for r, end in chunks)
        plan_drafts(generating, self._shape, self.max_draft, taken)
        decoded = self._decode_step(generating, chunks)
        live -= {id(r) for r in generating} - set(map(id, decoded))  # failed: released
        for r in decoded:
            if not self._sample(r, r.row_or_fail()):
                live.discard(id(r))
        for r, _end in chunks:
            if r.row is not None and r.prefilled == len(r.tokens) and not self._sample(r, r.row):
                live.discard(id(r))
        self._outbox.flush()

    def _prefill_step(
        self,
        prefilling: list[Running],
        live: set[int],
        budget: int,
        cut: bool = False,
    ) -> int:
        """Decode prompt chunks of the prefilling jobs (in order) while budget (prompt tokens)
        lasts, sampling the first token of those whose prompt is done; when cut, chunks are cut
        to what is left of the budget where that is exact (see prompt_chunks.chunk_end), else a
        chunk that starts within the budget is decoded whole; returns what is left of it."""
        prefilling = [r for r in prefilling if id(r) in live]
        packed = pack(prefilling, budget, self._shape.n_batch, budget if cut else None)
        if len(packed) > 1 and budget > 0:
            # Sampled before the next decode: that one overwrites llama.cpp's logits.
            budget -= self._prefill_packed(packed, budget if cut else None)
            for r in packed:
                if r.row is not None and not self._sample(r, r.row):
                    live.discard(id(r))
            done = set(map(id, packed))
            prefilling = [r for r in prefilling if id(r) not in done]
        for r in prefilling:
            if budget <= 0:
                break
            used = self._prefill_chunk(r, budget if cut else None)
            budget -= used
            if used == 0 or (
                r.row is not None and r.prefilled == len(r.tokens) and not self._sample(r, r.row)
            ):
                live.discard(id(r))
        return budget

    # The decodes themselves are in batch_decode.py; these names stay for tests and benches
    # that wrap them on an engine to watch its steps.
    def _decode_step(self, generating: list[Running], chunks: list[Chunk]) -> list[Running]:
        return self._decoder.decode_step(generating, chunks)

    def _prefill_packed(self, jobs: list[Running], at_most: int | None = None) -> int:
        return self._decoder.prefill_packed(jobs, at_most)

    def _prefill_chunk(self, r: Running, at_most: int | None = None) -> int:
        return self._decoder.prefill_chunk(r, at_most)

    def _sample(self, r: Running, row: int) -> bool:
        """Sample r's next token from batch row (and drafts: drafting.verify); False if done."""
        if r.drafts:
            return verify(r, row, self._sample_token, self._context)
        return self._sample_token(r, row)

    def _sample_token(self, r: Running, row: int) -> bool:
        """Sample one token of r from batch row and stream it; False when r has finished."""
        token = r.sampler.sample(self._context.ctx, row)
        now = time.perf_counter()
        r.first_at = r.first_at or now
        r.last_at = now
        if r.job.cancel_requested.is_set():
            self._finish(r, "cancelled", now)
            return False
        if llama_cpp.llama_vocab_is_eog(self._vocab, token) and not r.job.sampling.ignore_eos:
            self._finish(r, "stop", now)
            return False
        r.completion_tokens += 1
        top = r.job.sampling.logprobs
        if top is not None:
            ctx = self._context.ctx
            r.logprobs.append(token_logprob(ctx, row, self._n_vocab, token, top, self._piece))
        text, hit = r.stops.feed(r.decoder.decode(self._piece(token)))
        if text or (r.logprobs and hit):
            self._outbox.add(r.job, TextDelta(text, tuple(r.logprobs)))
            r.logprobs.clear()
        if hit:
            self._finish(r, "stop", now, flush=False)
            return False
        if r.completion_tokens >= r.budget:
            self._finish(r, "length", now)
            return False
        r.next_token = token
        return True

    def _finish(self, r: Running, reason: FinishReason, now: float, flush: bool = True) -> None:
        if flush and reason != "cancelled":
            # Text held back as a possible stop-string start, and any incomplete UTF-8.
            tail, hit = r.stops.feed(r.decoder.decode(b"", final=True))
            tail += "" if hit else r.stops.flush()
            if tail or r.logprobs:
                self._outbox.add(r.job, TextDelta(tail, tuple(r.logprobs)))
                r.logprobs.clear()
        finished = finished_event(r, reason, now)
        # The slot is free before the caller hears of the end, so stats() never lags.
        self._release(r)
        self._outbox.add(r.job, finished)
        if reason != "cancelled":
            self._speeds.record(finished)

    def _fail(self, r: Running, reason: str) -> None:
        logger.error("generation failed in slot %d: %s", r.slot.seq_id, reason)
        # What llama.cpp kept of a failed decode is unknown: the slot starts over empty.
        self._context.forget(r.slot.seq_id)
        r.slot.kv_tokens.clear()
        self._release(r)
        self._outbox.add(r.job, GenerationFailed(f"generation failed: {reason}"))

    def _release(self, r: Running) -> None:
        """Give the slot back now; its KV cells stay as a prefix cache until reused."""
        r.sampler.close()
        r.slot.busy = False
        # Only this thread writes _busy; stats() on the event loop reads it.
        self._busy -= 1
        if r.job.priority == "batch":
            self._busy_batch -= 1
