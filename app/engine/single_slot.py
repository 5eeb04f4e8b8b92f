"""One generation at a time on one llama_cpp.Llama, run in a thread off the event loop.

Requests beyond the running one wait in a bounded queue, interactive ones before batch ones
(no preemption here: a batch generation already running finishes first); a full queue refuses
at once (QueueFull) rather than letting latency grow without bound. Scheduling state is touched only
on the event loop's thread; the generation thread only reads its job and pushes events back.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import LogitsProcessorList
from llama_cpp.llama_grammar import LlamaGrammar

from app.engine.errors import BadRequest, EngineClosed, GenerationFailed, QueueFull
from app.engine.events import Finished, FinishReason, TextDelta
from app.engine.grammar import GrammarCache
from app.engine.job import MAX_RETRY_AFTER_S, JobChannel, JobSpeeds
from app.engine.loader import LoadedModel, LoadOptions, PreparedPrompt, load_model
from app.engine.protocol import EngineInfo, EngineStats
from app.engine.requests import GenerationRequest, Priority, SamplingParams
from app.engine.sampler_chain import check_sampling
from app.engine.stop_strings import StopMatcher
from app.engine.waiting import WaitingQueue

logger = logging.getLogger(__name__)


class SlotJob(JobChannel):
    """A submitted request of the single-slot engine."""

    def __init__(
        self,
        engine: SingleSlotEngine,
        prepared: PreparedPrompt,
        sampling: SamplingParams,
        loop: asyncio.AbstractEventLoop,
        submitted_at: float,
        priority: Priority = "interactive",
    ) -> None:
        super().__init__(prepared, sampling, loop, submitted_at, priority)
        self._engine = engine
        self.started_at: float | None = None
        # The grammar the output must follow (checked by GrammarCache), or None.
        self.gbnf: str | None = None

    def cancel(self) -> None:
        self.cancel_requested.set()
        self._engine._leave_queue(self)


class SingleSlotEngine:
    """The Engine of today: one slot, a bounded queue, cancellation at the next token."""

    def __init__(self, model: LoadedModel, max_queue: int = 16) -> None:
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self._model = model
        self._max_queue = max_queue
        self._waiting: WaitingQueue[SlotJob] = WaitingQueue()
        self._running: SlotJob | None = None
        self._closed = False
        # One thread: llama_cpp.Llama is not safe to use from two threads at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herd-generate")
        self._prompt_tokens = 0
        self._speeds = JobSpeeds()
        self._grammars = GrammarCache(model.llama._model.vocab)

    @property
    def info(self) -> EngineInfo:
        return self._model.info

    def stats(self) -> EngineStats:
        running = self._running
        return EngineStats(
            slots_total=1,
            slots_busy=0 if running is None else 1,
            queue_length=len(self._waiting),
            max_queue=self._max_queue,
            tokens_per_second=self._speeds.tokens_per_second,
            # llama-cpp-python's own prefix reuse is not reported: nothing counts as cached.
            prompt_tokens=self._prompt_tokens,
            batch_busy=int(running is not None and running.priority == "batch"),
            batch_waiting=self._waiting.count("batch"),
        )

    async def submit(self, request: GenerationRequest) -> SlotJob:
        if self._closed:
            raise EngineClosed("the worker is shutting down")
        loop = asyncio.get_running_loop()
        submitted_at = time.perf_counter()
        # Template rendering and tokenizing read only the vocabulary, so they may run beside
        # a generation; off the loop so a long prompt does not stall other connections.
        prepared, gbnf = await loop.run_in_executor(None, self._prepare, request)
        if self._closed:
            raise EngineClosed("the worker is shutting down")
        if self._running is not None and len(self._waiting) >= self._max_queue:
            raise QueueFull(len(self._waiting), self._retry_after_s())
        job = SlotJob(self, prepared, request.sampling, loop, submitted_at, request.priority)
        job.gbnf = gbnf
        self._waiting.append(job)
        self._dispatch()
        return job

    def _prepare(self, request: GenerationRequest) -> tuple[PreparedPrompt, str | None]:
        """Tokens and checked grammar of a request; BadRequest before it is queued."""
        check_sampling(request.sampling, self._model.llama._model.vocab)
        if request.sampling.logprobs is not None:
            raise BadRequest(
                "logprobs: log probabilities need the batched engine, which this model cannot "
                "use (see the worker's log)",
                param="logprobs",
            )
        constraint = request.constraint
        gbnf = None if constraint is None else self._grammars.gbnf(constraint)
        return self._model.prepare(request), gbnf

    def _retry_after_s(self) -> int:
        """Seconds until a queue place is likely free: the queue ahead times a mean job."""
        expected = (len(self._waiting) + 1) * self._speeds.job_seconds
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(expected)))

    def _leave_queue(self, job: SlotJob) -> None:
        if self._waiting.remove(job):
            now = time.perf_counter()
            job.put(job.finished("cancelled", 0, now, None, None, now))

    def _dispatch(self) -> None:
        if self._running is not None or self._closed:
            return
        while (job := self._waiting.pop()) is not None:
            if job.cancel_requested.is_set():
                continue
            self._running = job
            self._prompt_tokens += job.prompt_tokens
            job.started_at = time.perf_counter()
            future = job.loop.run_in_executor(self._executor, self._generate, job)
            future.add_done_callback(functools.partial(self._done, job))
            return

    def _done(self, job: SlotJob, future: asyncio.Future[Finished | None]) -> None:
        self._running = None
        try:
            finished = future.result()
        except BaseException:  # _generate catches its own; this is a last resort
            logger.exception("generation thread failed")
            job.put(GenerationFailed("generation failed; details are in the worker's log"))
            finished = None
        if finished is not None and finished.finish_reason != "cancelled":
            self._speeds.record(finished)
        if finished is not None:
            # Delivered here, after the slot is free, so stats() never lags what callers saw.
            job.put(finished)
        self._dispatch()

    def close(self) -> None:
        self._closed = True
        waiting = self._waiting.clear()
        now = time.perf_counter()
        for job in waiting:
            job.cancel_requested.set()
            job.push(job.finished("cancelled", 0, now, None, None, now))
        if self._running is not None:
            self._running.cancel_requested.set()
        # Waits for the running generation to notice its cancel flag (one token at most).
        self._executor.shutdown(wait=True)
        self._model.close()

    def _generate(self, job: SlotJob) -> Finished | None:
        """Run one generation to its end; on the generation thread."""
        try:
            finished = self._decode(job)
        except Exception:
            logger.exception("llama.cpp failed during a generation")
            job.push(GenerationFailed("llama.cpp failed; details are in the worker's log"))
            return None
        return finished

    def _decode(self, job: SlotJob) -> Finished:
        assert job.started_at is not None
        llama = self._model.llama
        params = job.sampling
        prompt = job.prepared.tokens
        room = self.info.n_ctx - len(prompt)
        budget = room if params.max_tokens is None else min(params.max_tokens, room)
        stops = StopMatcher(params.stop + job.prepared.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        llama.set_seed(params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        if params.seed is not None:
            # Reusing a cached prompt prefix evaluates it in other batches, which moves the
            # logits by float rounding; a seeded request evaluates its whole prompt so the
            # same request gives the same text.
            llama.reset()
        reason: FinishReason = "length"
        hit_stop_string = False
        count = 0
        first_at: float | None = None
        last_at: float | None = None
        if job.cancel_requested.is_set():
            reason = "cancelled"
            budget = 0
        tokens = llama.generate(
            prompt,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            temp=params.temperature,
            repeat_penalty=params.repeat_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            logits_processor=_logit_bias(params.logit_bias),
            grammar=LlamaGrammar.from_string(job.gbnf, verbose=False) if job.gbnf else None,
        )
        try:
            for token in tokens if budget > 0 else ():
                now = time.perf_counter()
                first_at = first_at or now
                last_at = now
                if job.cancel_requested.is_set():
                    reason = "cancelled"
                    break
                if self._model.is_end_of_generation(token) and not params.ignore_eos:
                    reason = "stop"
                    break
                count += 1
                piece = decoder.decode(llama.detokenize([token]))
                text, hit = stops.feed(piece)
                if text:
                    job.push(TextDelta(text))
                if hit:
                    reason, hit_stop_string = "stop", True
                    break
                if count >= budget:
                    break
        finally:
            tokens.close()
        if not hit_stop_string and reason != "cancelled":
            # Text held back as a possible stop-string start, and any incomplete UTF-8.
            tail, hit = stops.feed(decoder.decode(b"", final=True))
            tail += "" if hit else stops.flush()
            if tail:
                job.push(TextDelta(tail))
        return job.finished(reason, count, job.started_at, first_at, last_at, time.perf_counter())


def _logit_bias(biases: tuple[tuple[int, float], ...]) -> LogitsProcessorList | None:
    """OpenAI's logit_bias as a llama-cpp-python logits processor (-100 bans the token)."""
    if not biases:
        return None
    tokens = np.array([t for t, _ in biases], dtype=np.intc)
    values = np.array([-np.inf if b <= -100 else b for _, b in biases], dtype=np.single)

    def add_bias(input_ids: Any, scores: Any) -> Any:
        scores[tokens] += values
        return scores

    return LogitsProcessorList([add_bias])


def load_engine(options: LoadOptions, max_queue: int = 16) -> SingleSlotEngine:
    """Load the model and wrap it in today's engine; raises ModelLoadError."""
    return SingleSlotEngine(load_model(options), max_queue=max_queue)
