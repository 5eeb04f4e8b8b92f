"""The llama context the batched engine decodes in: one KV stream per slot.

llama-server's layout with an explicit --parallel: kv_unified off, so every sequence has its
own stream of n_ctx_slot cells. A sequence's attention then sees only its own cells, laid out
as if it ran alone, which keeps outputs independent of what else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import llama_cpp

from app.engine.errors import EngineError
from app.engine.token_batch import TokenBatch


class BatchingUnsupported(EngineError):
    """This model or build cannot be served by the batched engine; the reason says why."""


@dataclass(frozen=True)
class ContextShape:
    """How big the context is: slots sequences of n_ctx_slot tokens each."""

    slots: int
    n_ctx_slot: int
    # Tokens per llama_decode call: every generating slot's next token plus prompt chunks.
    n_batch: int
    n_threads: int
    n_threads_batch: int


def batching_obstacle(model: Any) -> str | None:
    """Why the batched engine cannot serve this llama_model, or None when it can."""
    if not llama_cpp.llama_model_has_decoder(model):
        return "the model has no decoder (embedding-only)"
    if llama_cpp.llama_model_has_encoder(model):
        return "encoder-decoder models need llama_encode per request"
    if llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model):
        return "recurrent state cannot be truncated to a shared prompt prefix"
    return None


class BatchContext:
    """A llama_context with shape.slots sequences; used only by the scheduler thread."""

    def __init__(self, model: Any, shape: ContextShape) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = shape.n_ctx_slot * shape.slots
        params.n_batch = shape.n_batch
        # One micro-batch per call: prompt chunks reach llama.cpp's kernels as cut here.
        params.n_ubatch = shape.n_batch
        params.n_seq_max = shape.slots
        params.n_threads = shape.n_threads
        params.n_threads_batch = shape.n_threads_batch
        params.kv_unified = False
        params.no_perf = True
        self.shape = shape
        # What this context's KV cells depend on besides the model and the shape (llama.cpp's
        # defaults but kv_unified): KV prefix snapshots are fingerprinted with it.
        self.kv_settings = {
            "flash_attn_type": int(params.flash_attn_type),
            "type_k": int(params.type_k),
            "type_v": int(params.type_v),
            "swa_full": bool(params.swa_full),
            "offload_kqv": bool(params.offload_kqv),
            "op_offload": bool(params.op_offload),
            "kv_unified": bool(params.kv_unified),
        }
        ctx = llama_cpp.llama_init_from_model(model, params)
        if ctx is None:
            raise BatchingUnsupported("llama.cpp could not create a context with these slots")
        self.ctx: Any = ctx
        self._memory: Any = llama_cpp.llama_get_memory(ctx)
        if self._memory is None:
            llama_cpp.llama_free(ctx)
            raise BatchingUnsupported("the context has no KV memory")
        self.batch = TokenBatch(shape.n_batch)

    def warm_up(self, token: int) -> None:
        """Decode one token and forget it, as llama-server does at start: the first decode
        pages the weights in and sizes buffers, which would otherwise land on a request."""
        self.batch.clear()
        self.batch.add(token, 0, 0, True)
        self.decode()
        llama_cpp.llama_memory_clear(self._memory, True)
        self.batch.clear()

    def decode(self) -> int:
        """llama_decode the current batch; 0 on success, llama.cpp's code otherwise."""
        return int(llama_cpp.llama_decode(self.ctx, self.batch.native))

    def forget(self, seq_id: int, from_pos: int = 0) -> None:
        """Drop seq_id's cells from from_pos on (all of them by default)."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, from_pos, -1)

    def copy_prefix(self, src: int, dst: int, n_tokens: int) -> None:
        """Make dst hold src's first n_tokens cells.

        Streams are separate, so llama.cpp copies a whole stream (it refuses partial ranges
        across streams, and does the copy at the start of the next decode); the tail beyond
        the shared prefix is then dropped from dst.
        """
        llama_cpp.llama_memory_seq_rm(self._memory, dst, -1, -1)
        llama_cpp.llama_memory_seq_cp(self._memory, src, dst, -1, -1)
        llama_cpp.llama_memory_seq_rm(self._memory, dst, n_tokens, -1)

    def close(self) -> None:
        self.batch.close()
        if self.ctx is not None:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
