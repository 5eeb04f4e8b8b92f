"""Prompt-lookup drafts in the batched engine: which jobs draft, and the verification.

Each step a generating job may add drafts (lookup_drafts.NgramIndex over its prompt and
output so far) as rows after its next token in the step's one llama_decode. Sampling then
goes row by row with the job's own sampler chain (verify): the sample from a row is the
job's real next token, drawn from logits that are exactly those a plain decode would give
once the drafts before it are confirmed; while it equals the next draft, the following row
is valid too. The first mismatch ends it (the token sampled there is the correction), as
does a stop, end of generation or the length limit; cells of unconfirmed drafts are dropped.

Why this keeps the output: the chain samples exactly the tokens a plain run samples, one
call per output token, from the same logits, and accepts (penalties, grammar) only those.
So it is exact for greedy requests and, given the same seed, for sampled ones too: the RNG
draws once per output token either way. Drafting pays where the output copies its prompt
(the pacer, lookup_drafts.DraftPacer, backs off elsewhere), so it is on for every request
that did not opt out (SamplingParams.draft) while the worker allows it (max_draft > 0).

Exactness on the CPU backend, measured with the demo model (greedy, token by token and each
token's log probability): rows of one sequence decoded together compute like one-token
decodes while they are under ATTENTION_TILE_ROWS (slots.py; a draft is at most MAX_DRAFT)
and at positions below PACK_MAX_POS (prompt_chunks.py). Past it, a one-token decode of a
sequence alone in its micro-batch sees a KV view of 512+ cells and llama.cpp picks its
split-KV attention kernel (F16 cache: ggml's flash-attention split path), which rounds
unlike the row-by-row kernel every multi-row piece uses: logits differed in the 3rd decimal
and greedy outputs split after 50-100 tokens. So drafts stop at PACK_MAX_POS (plan_drafts'
exact_until). With a quantized KV cache (type_k/type_v q8_0) llama.cpp uses neither the
split nor the tiled kernel and the outputs were identical at every position (prompts of
255-1,600 tokens), but Herd's context uses llama.cpp's default F16 cache.
"""

from __future__ import annotations

from collections.abc import Callable

from app.engine.batch_context import BatchContext, ContextShape
from app.engine.batch_job import Running
from app.engine.lookup_drafts import NgramIndex
from app.engine.prompt_chunks import PACK_MAX_POS


def may_draft(r: Running) -> bool:
    """Whether r drafts: unless it opted out (a grammar is fine: it only sees what the chain
    accepts, and JSON extracted from a prompt copies it)."""
    return r.job.sampling.draft


def _index(r: Running) -> NgramIndex:
    """r's n-gram index brought up to its tokens: what its KV holds, then the pending one
    (which the KV holds after this step's decode, so the next sync starts past it)."""
    assert r.next_token is not None
    held = r.slot.kv_tokens
    index = r.lookup
    if index is None or len(index) > len(held):
        index = r.lookup = NgramIndex()
    index.extend(held[len(index) :])
    index.extend((r.next_token,))
    return index


def plan_drafts(
    generating: list[Running],
    shape: ContextShape,
    max_draft: int,
    taken: int = 0,
    exact_until: int | None = PACK_MAX_POS,
) -> None:
    """Set r.drafts of each generating job for this step: at most max_draft each, within the
    batch's rows beyond one per job and the taken ones (prompt chunks in the same decode),
    none past the job's length or context limit, and every row (the pending token's too) at
    a position below exact_until (see the module)."""
    room = shape.n_batch - len(generating) - taken
    for r in generating:
        r.drafts = []
        if room <= 0 or max_draft <= 0 or not may_draft(r):
            continue
        held = len(r.slot.kv_tokens)
        end = shape.n_ctx_slot if exact_until is None else min(shape.n_ctx_slot, exact_until)
        # The pending token is output already; the last output token is never decoded.
        left = min(r.budget - r.completion_tokens - 1, end - held - 1)
        k = min(max_draft, room, left)
        if k <= 0:
            continue
        k = min(k, r.pacer.wanted())
        if k <= 0:
            continue
        r.drafts = _index(r).draft(k)
        room -= len(r.drafts)


def verify(
    r: Running, row: int, sample: Callable[[Running, int], bool], context: BatchContext
) -> bool:
    """Sample r from row and its drafts' rows after it (see the module); sample(r, row) is the
    engine's one-token sample, False once r has finished. Returns what the last one did."""
    drafts, r.drafts = r.drafts, []
    first = len(r.slot.kv_tokens) - len(drafts)
    r.drafted_tokens += len(drafts)
    accepted = 0
    going = sample(r, row)
    while going and accepted < len(drafts) and r.next_token == drafts[accepted]:
        accepted += 1
        r.accepted_tokens += 1
        going = sample(r, row + accepted)
    r.pacer.record(len(drafts), accepted)
    # Keep the cells of the pending token and the confirmed drafts; kv_tokens follows.
    keep = first + accepted
    context.forget(r.slot.seq_id, keep)
    del r.slot.kv_tokens[keep:]
    return going
