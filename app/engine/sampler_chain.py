"""One request's sampler, built from llama.cpp's native sampler chain.

Every per-token step (grammar, logit bias, penalties, top-k, top-p, min-p, temperature, the
seeded draw) runs in llama.cpp's C code: Python makes one call per token, never touches the
logits array.
"""

from __future__ import annotations

from typing import Any

import llama_cpp

from app.engine.errors import BadRequest
from app.engine.grammar import grammar_sampler
from app.engine.requests import SamplingParams


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

    gbnf (a grammar already checked by GrammarCache) goes first: it masks every token that
    would break the grammar before anything else picks among the rest, so the output always
    parses. penalty_window bounds how many recent tokens the OpenAI penalties look at.
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
        self._penalties: Any = None
        self._history = max(params.repeat_last_n, 1)
        add = self._add
        if gbnf is not None:
            grammar = grammar_sampler(vocab, gbnf)
            if grammar is None:  # GrammarCache parsed it already; only a bug lands here
                self.close()
                raise BadRequest("the grammar could not be parsed", param="grammar")
            add(grammar)
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
        if params.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return
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

    def accept_prompt(self, tokens: list[int]) -> None:
        """Feed the prompt to the repeat penalty's history (llama.cpp's repeat penalty looks
        at the prompt too; OpenAI's penalties and the grammar see only generated tokens)."""
        if self.uses_history and self._penalties is not None:
            for token in tokens[-self._history :]:
                llama_cpp.llama_sampler_accept(self._penalties, token)

    def sample(self, ctx: Any, batch_index: int) -> int:
        """Draw the next token from the logits of batch row batch_index (and accept it)."""
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
