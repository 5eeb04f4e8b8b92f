"""Log probabilities of sampled tokens, from the raw logits llama.cpp left for a batch row.

Computed only for requests that ask: a log-softmax over the vocabulary per token (numpy, on
the scheduler thread, before the next decode overwrites the logits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np

from app.engine.events import TokenLogprob


def token_logprob(
    ctx: Any, row: int, n_vocab: int, token: int, top: int, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """The model's log probability of token at batch row, and its top alternatives."""
    pointer = llama_cpp.llama_get_logits_ith(ctx, row)
    logits = np.ctypeslib.as_array(pointer, shape=(n_vocab,))
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
    chosen = float(logits[token]) - log_total
    alternatives: tuple[tuple[bytes, float], ...] = ()
    if top > 0:
        best = np.argpartition(logits, -top)[-top:]
        best = best[np.argsort(-logits[best], kind="stable")]
        alternatives = tuple((piece(int(t)), float(logits[t]) - log_total) for t in best)
    return TokenLogprob(piece(token), chosen, alternatives)
