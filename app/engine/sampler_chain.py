"""One request's sampler, built from llama.cpp's native sampler chain.

Every per-token step (grammar, logit bias, penalties, top-k, top-p, min-p, temperature, the
seeded draw) runs in llama.cpp's C code. Without a grammar Python makes one call per token and
never touches the logits; with one it checks the drawn token and, rarely, redraws from
candidate arrays it fills with numpy (candidates.py; see SamplerChain).
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp
import numpy as np

from app.engine.candidates import Candidates, TokenArray
from app.engine.errors import BadRequest
from app.engine.grammar import grammar_sampler
from app.engine.requests import SamplingParams

# When the grammar refuses the drawn token, it first checks only this many of the likeliest
# tokens (about 0.2 ms instead of about 30 ms for a 49k vocabulary); see SamplerChain.
SHORTLIST_TOKENS = 256


def check_sampling(params: SamplingParams, vocab: Any) -> None:
    """Refuse (BadRequest) what a chain could not be built from, before the request queues."""
    if params.logit_bias:
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        for token, _ in params.logit_bias:
            if not 0 <= token < n_vocab:
                raise BadRequest(
                    f"logit_bias: token {token} does not exist; this model's token ids run "
                    f"from 0 to {n_vocab - 1}",
                    param="logit_bias",
                )


class SamplerChain:
    """A llama_sampler chain owned by one request; close() frees it.

    gbnf (a grammar already checked by GrammarCache) constrains the output the way
    llama-server does (common_sampler_sample): the chain draws a token from the raw logits
    and the grammar checks only that token. A model asked for JSON mostly proposes valid
    tokens; checking the whole vocabulary every step (the grammar first in the chain) cost
    about half the decode speed (profile in bench/RESULTS.md).

    When the grammar refuses the token, the draw is redone with the grammar's mask. llama.cpp
    masks the whole vocabulary for that (about 30 ms: it decodes every token's text); here
    the grammar first masks a shortlist of the SHORTLIST_TOKENS likeliest tokens, which
    picks exactly what the whole vocabulary would whenever the shortlist keeps enough valid
    tokens: one for greedy, top_k when sampling with top_k (the top_k valid tokens overall
    are then all in it). Otherwise, and without top_k, the whole vocabulary is masked.
    penalty_window bounds how many recent tokens the OpenAI penalties look at.
    """

    def __init__(
        self,
        params: SamplingParams,
        vocab: Any,
        gbnf: str | None = None,
        penalty_window: int = 4096,
    ) -> None:
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        # Perf counters cost a clock read per token and nobody reads them here.
        chain_params.no_perf = True
        self._chain: Any = llama_cpp.llama_sampler_chain_init(chain_params)
        self._samplers = 0
        self._penalties: Any = None
        self._grammar: Any = None
        self._candidates: Candidates | None = None
        self._history = max(params.repeat_last_n, 1)
        add = self._add
        if gbnf is not None:
            self._grammar = grammar_sampler(vocab, gbnf)
            if self._grammar is None:  # GrammarCache parsed it already; only a bug lands here
                self.close()
                raise BadRequest("the grammar could not be parsed", param="grammar")
            n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
            self._candidates = Candidates(n_vocab, max(SHORTLIST_TOKENS, 4 * params.top_k))
        if params.logit_bias:
            n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
            # check_sampling refused ids out of range before the request was queued.
            biases = [(t, b) for t, b in params.logit_bias if 0 <= t < n_vocab]
            array = (llama_cpp.llama_logit_bias * len(biases))()
            for i, (token, bias) in enumerate(biases):
                # OpenAI: -100 or 100 "should result in a ban or exclusive selection".
                array[i] = llama_cpp.llama_logit_bias(
                    token, float("-inf") if bias <= -100 else bias
                )
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), array))
        self.uses_history = params.repeat_penalty != 1.0
        openai_penalties = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        if self.uses_history or openai_penalties:
            n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
            window = max(params.repeat_last_n, penalty_window if openai_penalties else 0)
            self._penalties = llama_cpp.llama_sampler_init_penalties(
                n_vocab,
                window,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
            add(self._penalties)
        # The samplers so far shift logits in place; the rest truncate and pick.
        self._adjusting = self._samplers
        if params.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            self._shortlist_needs: int | None = 1
            return
        self._shortlist_needs = params.top_k if params.top_k > 0 else None
        # llama.cpp's own default order (common_params_sampling): truncate, then temperature,
        # then the draw; top_k 0 means "all tokens", as in llama.cpp.
        if params.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def _add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)
        self._samplers += 1

    def accept_prompt(self, tokens: list[int]) -> None:
        """Feed the prompt to the repeat penalty's history (llama.cpp's repeat penalty looks
        at the prompt too; OpenAI's penalties and the grammar see only generated tokens)."""
        if self.uses_history and self._penalties is not None:
            for token in tokens[-self._history :]:
                llama_cpp.llama_sampler_accept(self._penalties, token)

    def sample(self, ctx: Any, batch_index: int) -> int:
        """Draw the next token from the logits of batch row batch_index (and accept it)."""
        candidates = self._candidates
        if candidates is None:
            return int(llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index))
        logits = candidates.logits_row(llama_cpp.llama_get_logits_ith(ctx, batch_index))
        if self._penalties is None:
            # Without penalties no sampler of the chain keeps state on accept, so llama.cpp's
            # own sample (which accepts the token it draws) may propose: the cheap path.
            token = int(llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index))
            accepted = True
        else:
            array = candidates.fill_vocab(logits)
            self._apply(array, 0, self._samplers)
            token = array.selected_token()
            accepted = False
        if not self._allows(token):
            token = self._redraw(candidates, logits)
            accepted = self._penalties is None
        llama_cpp.llama_sampler_accept(self._grammar, token)
        if not accepted:
            llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def _allows(self, token: int) -> bool:
        """Whether the grammar, in its current state, lets token come next."""
        single = llama_cpp.llama_token_data(token, 1.0, 0.0)
        array = llama_cpp.llama_token_data_array(ctypes.pointer(single), 1, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return bool(single.logit != -math.inf)

    def _redraw(self, candidates: Candidates, logits: np.ndarray) -> int:
        """The chain's pick once the grammar has masked what it refuses (see the class)."""
        ids = candidates.all_ids()
        if self._adjusting:
            # Bias and penalties first: the shortlist is of the logits the chain would see.
            # (Masking and shifting commute: -inf stays -inf.)
            array = candidates.fill_vocab(logits)
            self._apply(array, 0, self._adjusting)
            logits = array.logits().copy()
        needs = self._shortlist_needs
        if needs is not None:
            short = candidates.fill_short(ids, logits)
            short.apply(self._grammar)
            if int(np.isfinite(short.logits()).sum()) >= needs:
                self._apply(short, self._adjusting, self._samplers)
                return short.selected_token()
        array = candidates.fill_vocab(logits)
        array.apply(self._grammar)
        self._apply(array, self._adjusting, self._samplers)
        return array.selected_token()

    def _apply(self, array: TokenArray, first: int, end: int) -> None:
        """Apply the chain's samplers first..end-1 to array."""
        for i in range(first, end):
            array.apply(llama_cpp.llama_sampler_chain_get(self._chain, i))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
