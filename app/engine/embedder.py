"""Embeddings: many inputs pooled in one llama_decode, in a context made for it.

An embedding worker owns one llama context with embeddings on, a pooling type and room for
max_seqs sequences and max_tokens tokens per decode. One thread packs the waiting inputs of
every request (in arrival order) into one batch, decodes it once, reads one pooled vector per
sequence (llama_get_embeddings_seq) and L2-normalises it, as OpenAI's vectors are.

Threads: embed() runs on the event loop and only queues; everything that touches llama.cpp
runs on the embedding thread. They share the waiting queue under a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from app.engine.errors import BadRequest, EngineClosed, GenerationFailed, ModelLoadError, QueueFull
from app.engine.job import MAX_RETRY_AFTER_S, moving_average
from app.engine.loader import LoadedModel, LoadOptions, load_model
from app.engine.pooling import Pooling
from app.engine.protocol import EngineInfo, EngineStats, Generation
from app.engine.requests import PRIORITIES, GenerationRequest, Priority
from app.engine.token_batch import TokenBatch

logger = logging.getLogger(__name__)

POOLING_TYPES: dict[Pooling, int] = {
    "model": llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
}
POOLING_NAMES = {v: k for k, v in POOLING_TYPES.items() if k != "model"}
# Sequences per decode. llama.cpp allows 256; 64 keeps the per-sequence bookkeeping small
# while a batch of 32 inputs (the usual client batch) still goes in one decode.
MAX_SEQS = 64
# The Llama object is kept for its vocabulary; its own context is as small as llama.cpp takes.
HELPER_N_CTX = 256

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbeddingInfo:
    """What an embedding worker computes: vector size, pooling, limits per input."""

    dimensions: int
    pooling: str
    max_input_tokens: int
    max_seqs: int


class EmbedJob:
    """One request: its inputs, the vectors filled in as their decodes finish."""

    def __init__(self, inputs: list[list[int]], dimensions: int, loop: asyncio.AbstractEventLoop):
        self.inputs = inputs
        self.vectors: Vectors = np.zeros((len(inputs), dimensions), dtype=np.float32)
        self.remaining = len(inputs)
        self.loop = loop
        self.future: asyncio.Future[Vectors] = loop.create_future()
        self.failed = False

    def deliver(self, callback: Callable[..., None], *args: object) -> None:
        """Run callback on the caller's event loop; nothing if that loop is gone."""
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            self.loop.call_soon_threadsafe(callback, *args)

    def resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(self.vectors)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class EmbeddingEngine:
    """A loaded model that turns token sequences into pooled, normalised vectors."""

    def __init__(
        self,
        model: LoadedModel,
        ctx: Any,
        info: EngineInfo,
        embedding: EmbeddingInfo,
        max_queue: int = 16,
    ) -> None:
        self._model = model
        self._ctx = ctx
        self._memory: Any = llama_cpp.llama_get_memory(ctx)
        self._info = info
        self.embedding = embedding
        self._max_queue = max_queue
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(model.llama._model.vocab))
        self._batch = TokenBatch(embedding.max_input_tokens)
        # (job, input index) in arrival order, one lane per priority class; a job enters whole
        # and leaves input by input. Interactive inputs are taken first: a live call waits at
        # most for the decode in flight, not behind the inputs of a large batch call.
        self._lanes: dict[Priority, deque[tuple[EmbedJob, int]]] = {p: deque() for p in PRIORITIES}
        # Calls with inputs still waiting, by class: batch calls take no queue places from
        # interactive ones.
        self._jobs_waiting: dict[Priority, int] = dict.fromkeys(PRIORITIES, 0)
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._inputs_per_second: float | None = None
        self._tokens_per_second: float | None = None
        self._prompt_tokens = 0
        # llama_decode calls since start: how well inputs were batched (tests, benchmarks).
        self.decodes = 0
        self._thread = threading.Thread(target=self._run, name="herd-embed", daemon=True)
        self._thread.start()

    # -- what the worker reads -----------------------------------------------------------------
    @property
    def info(self) -> EngineInfo:
        return self._info

    def stats(self) -> EngineStats:
        with self._cond:
            waiting = sum(self._jobs_waiting.values())
        return EngineStats(
            slots_total=1,
            slots_busy=1 if self._busy else 0,
            queue_length=waiting,
            max_queue=self._max_queue,
            # Input tokens pooled per second: an embedding worker generates none.
            tokens_per_second=self._tokens_per_second,
            prompt_tokens=self._prompt_tokens,
        )

    async def submit(self, request: GenerationRequest) -> Generation:
        raise BadRequest(
            "this worker serves embeddings only (POST /v1/embeddings); deploy the model "
            "without the embeddings option for chat and completions"
        )

    # -- inputs --------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Text -> tokens with the model's own special tokens (BOS, and EOS/SEP where the
        vocabulary asks for it), as llama-server tokenizes embedding inputs."""
        llama = self._model.llama
        return list(llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def check(self, inputs: list[list[int]]) -> None:
        """Refuse what llama.cpp must never see: empty inputs, unknown token ids (it would
        abort the process) and inputs longer than one decode holds."""
        limit = self.embedding.max_input_tokens
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise BadRequest(f"input[{i}] is empty")
            if len(tokens) > limit:
                raise BadRequest(
                    f"input[{i}] is {len(tokens)} tokens, above this worker's limit of {limit} "
                    "tokens per input"
                )
            bad = next((t for t in tokens if not 0 <= t < self._n_vocab), None)
            if bad is not None:
                raise BadRequest(
                    f"input[{i}] holds token id {bad}, outside this model's vocabulary "
                    f"(0..{self._n_vocab - 1})"
                )

    async def embed(self, inputs: list[list[int]], priority: Priority = "interactive") -> Vectors:
        """One normalised vector per input (rows in input order); raises BadRequest,
        QueueFull, EngineClosed or GenerationFailed."""
        self.check(inputs)
        loop = asyncio.get_running_loop()
        job = EmbedJob(inputs, self.embedding.dimensions, loop)
        with self._cond:
            if self._closed:
                raise EngineClosed("the worker is shutting down")
            ahead = self._jobs_waiting["interactive"]
            if priority == "batch":
                ahead += self._jobs_waiting["batch"]
            if self._busy and ahead >= self._max_queue:
                raise QueueFull(ahead, self._retry_after_s())
            self._lanes[priority].extend((job, i) for i in range(len(inputs)))
            self._jobs_waiting[priority] += 1
            self._cond.notify()
        return await job.future

    def _retry_after_s(self) -> int:
        rate = self._inputs_per_second or 1.0
        waiting = sum(len(lane) for lane in self._lanes.values())
        return max(1, min(MAX_RETRY_AFTER_S, round(waiting / rate) + 1))

    # -- the embedding thread -----------------------------------------------------------------
    def _take(self) -> list[tuple[EmbedJob, int]] | None:
        """The next batch: inputs in arrival order while they fit; None once closed."""
        with self._cond:
            while not any(self._lanes.values()) and not self._closed:
                self._busy = False
                self._cond.wait()
            if self._closed:
                return None
            self._busy = True
            taken: list[tuple[EmbedJob, int]] = []
            tokens = 0
            for priority, lane in self._lanes.items():  # interactive first (PRIORITIES' order)
                while lane and len(taken) < self.embedding.max_seqs:
                    job, i = lane[0]
                    n = len(job.inputs[i])
                    if taken and tokens + n > self.embedding.max_input_tokens:
                        return taken
                    lane.popleft()
                    if i == 0:
                        self._jobs_waiting[priority] -= 1
                    if job.failed:
                        continue
                    taken.append((job, i))
                    tokens += n
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            if not taken:
                continue
            started = time.perf_counter()
            try:
                vectors = self._decode([job.inputs[i] for job, i in taken])
            except Exception:
                logger.exception("llama.cpp failed while embedding")
                failure = GenerationFailed("embedding failed in llama.cpp")
                for job, _ in taken:
                    job.failed = True
                    job.deliver(job.fail, failure)
                continue
            seconds = max(time.perf_counter() - started, 1e-9)
            tokens = sum(len(job.inputs[i]) for job, i in taken)
            self._inputs_per_second = moving_average(self._inputs_per_second, len(taken) / seconds)
            self._tokens_per_second = moving_average(self._tokens_per_second, tokens / seconds)
            self._prompt_tokens += tokens
            for row, (job, i) in enumerate(taken):
                job.vectors[i] = vectors[row]
                job.remaining -= 1
                if job.remaining == 0:
                    job.deliver(job.resolve)

    def _decode(self, sequences: list[list[int]]) -> Vectors:
        """Decode the sequences together (sequence k as seq_id k); their pooled vectors."""
        if self._memory is not None:
            # Causal models keep KV cells; nothing from an earlier batch may be attended to.
            llama_cpp.llama_memory_clear(self._memory, True)
        batch = self._batch
        batch.clear()
        for seq_id, tokens in enumerate(sequences):
            # Every token is an output: pooling reads all of them.
            for pos, token in enumerate(tokens):
                batch.add(token, pos, seq_id, True)
        code = int(llama_cpp.llama_decode(self._ctx, batch.native))
        self.decodes += 1
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        dims = self.embedding.dimensions
        out = np.empty((len(sequences), dims), dtype=np.float32)
        for seq_id in range(len(sequences)):
            pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, seq_id)
            if not pointer:
                raise RuntimeError(f"llama.cpp returned no pooled vector for sequence {seq_id}")
            out[seq_id] = np.ctypeslib.as_array(
                ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(dims,)
            )
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        # A zero vector stays zero rather than becoming NaN.
        out /= np.where(norms > 0, norms, np.float32(1.0))
        return out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            waiting = [item for lane in self._lanes.values() for item in lane]
            for lane in self._lanes.values():
                lane.clear()
            self._cond.notify_all()
        for job, _ in waiting:
            job.deliver(job.fail, EngineClosed("the worker is shutting down"))
        self._thread.join()
        self._batch.close()
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        self._model.close()


def _context(model: Any, options: LoadOptions, pooling: int, max_tokens: int) -> Any:
    params = llama_cpp.llama_context_default_params()
    params.embeddings = True
    params.pooling_type = pooling
    params.n_ctx = max_tokens
    # Non-causal (BERT-like) models need each sequence whole in one micro-batch.
    params.n_batch = max_tokens
    params.n_ubatch = max_tokens
    params.n_seq_max = MAX_SEQS
    # Sequences share the cells: one long input may use all of them.
    params.kv_unified = True
    if options.threads:
        params.n_threads = options.threads
        params.n_threads_batch = options.threads
    params.no_perf = True
    return llama_cpp.llama_init_from_model(model, params)


def load_embedding_engine(
    options: LoadOptions, pooling: Pooling = "model", max_queue: int = 16
) -> EmbeddingEngine:
    """Load options.model_path for embeddings; options.n_ctx is the tokens one decode (and so
    one input) may hold. Raises ModelLoadError with the reason."""
    model = load_model(replace(options, n_ctx=HELPER_N_CTX))
    ctx = None
    try:
        llama_model = model.llama.model
        max_tokens = max(8, options.n_ctx)
        ctx = _context(llama_model, options, POOLING_TYPES[pooling], max_tokens)
        if ctx is None:
            raise ModelLoadError("llama.cpp could not create an embeddings context")
        resolved = int(llama_cpp.llama_pooling_type(ctx))
        if resolved == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            # Chat models' GGUFs name no pooling; mean pooling is the usual choice for them.
            logger.info("the GGUF names no pooling type; pooling by mean")
            llama_cpp.llama_free(ctx)
            ctx = _context(llama_model, options, llama_cpp.LLAMA_POOLING_TYPE_MEAN, max_tokens)
            if ctx is None:
                raise ModelLoadError("llama.cpp could not create an embeddings context")
            resolved = int(llama_cpp.llama_pooling_type(ctx))
        if resolved not in POOLING_NAMES:
            raise ModelLoadError(
                f"the model's pooling type ({resolved}: a reranker) gives no embedding vectors"
            )
        dimensions = int(llama_cpp.llama_model_n_embd_out(llama_model))
        embedding = EmbeddingInfo(
            dimensions=dimensions,
            pooling=POOLING_NAMES[resolved],
            max_input_tokens=max_tokens,
            max_seqs=MAX_SEQS,
        )
        info = replace(model.info, n_ctx=max_tokens, slots_total=1)
        engine = EmbeddingEngine(model, ctx, info, embedding, max_queue=max_queue)
    except BaseException:
        if ctx is not None:
            llama_cpp.llama_free(ctx)
        model.close()
        raise
    logger.info(
        "embeddings: %d dimensions, %s pooling, up to %d tokens and %d inputs per decode",
        dimensions,
        embedding.pooling,
        max_tokens,
        MAX_SEQS,
    )
    return engine
