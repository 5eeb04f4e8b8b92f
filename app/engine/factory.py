"""Build the engine a worker serves: batched when the model allows, else one slot."""

from __future__ import annotations

import logging
from dataclasses import replace

from app.engine.batch_context import (
    BatchContext,
    BatchingUnsupported,
    ContextShape,
    batching_obstacle,
)
from app.engine.batched import BatchedEngine
from app.engine.loader import LoadOptions, load_model
from app.engine.prefix_snapshots import PrefixSnapshots, SnapshotConfig
from app.engine.protocol import Engine
from app.engine.single_slot import load_engine as load_single_slot_engine

logger = logging.getLogger(__name__)

# The Llama object is kept for its vocabulary, chat template and weights; decoding happens in
# the batched engine's own context, so the Llama's context is made as small as llama.cpp takes.
HELPER_N_CTX = 256
# Tokens per decode step: room for every slot's next token plus prompt chunks (llama-server's
# physical batch size); a larger step makes prompts faster and running streams stutter more.
STEP_TOKENS = 512


def load_batched_engine(
    options: LoadOptions, max_queue: int = 16, snapshots: SnapshotConfig | None = None
) -> BatchedEngine:
    """Load the model with options.parallel sequences in one context; raises ModelLoadError, or
    BatchingUnsupported when this model cannot be batched. With snapshots, hot KV prefixes
    saved by an earlier engine of the same model and settings are restored into its slots."""
    model = load_model(replace(options, n_ctx=HELPER_N_CTX))
    try:
        llama = model.llama
        obstacle = batching_obstacle(llama.model)
        if obstacle is not None:
            raise BatchingUnsupported(obstacle)
        slots = max(1, options.parallel)
        shape = ContextShape(
            slots=slots,
            n_ctx_slot=options.n_ctx,
            n_batch=max(STEP_TOKENS, slots),
            n_threads=int(llama.n_threads),
            n_threads_batch=int(options.threads or llama.n_threads_batch),
        )
        context = BatchContext(llama.model, shape)
        bos = llama.token_bos()
        context.warm_up(bos if bos >= 0 else 0)
        saved = PrefixSnapshots.open(snapshots, context, options)
        saved.restore()
    except BaseException:
        model.close()
        raise
    # What a request may use is one slot's share; prepare() checks prompts against it.
    model.info = replace(
        model.info, n_ctx=shape.n_ctx_slot, slots_total=slots, n_threads=shape.n_threads_batch
    )
    return BatchedEngine(
        model,
        context,
        model.info,
        max_queue=max_queue,
        snapshots=saved,
        max_draft=options.lookup_drafts,
    )


def make_engine(
    options: LoadOptions,
    max_queue: int = 16,
    batched: bool = True,
    snapshots: SnapshotConfig | None = None,
) -> Engine:
    """The batched engine, or the single-slot one where batching cannot serve the model
    (snapshots: see load_batched_engine; the single-slot engine keeps none)."""
    if batched:
        try:
            return load_batched_engine(options, max_queue=max_queue, snapshots=snapshots)
        except BatchingUnsupported as exc:
            logger.warning(
                "continuous batching is not available for %s (%s); serving one request at a "
                "time with the single-slot engine (--parallel %d is ignored)",
                options.model_path.name,
                exc,
                options.parallel,
            )
    return load_single_slot_engine(options, max_queue=max_queue)
