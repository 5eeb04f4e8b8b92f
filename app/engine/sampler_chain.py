"""One request's sampler, built from llama.cpp's native sampler chain.

Every per-token step (penalties, top-k, top-p, min-p, temperature, the seeded draw) runs in
llama.cpp's C code: Python makes one call per token, never touches the logits array.
"""

from __future__ import annotations

from typing import Any

import llama_cpp

from app.engine.requests import SamplingParams


class SamplerChain:
    """A llama_sampler chain owned by one request; close() frees it."""

    def __init__(self, params: SamplingParams, vocab: Any) -> None:
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        # Perf counters cost a clock read per token and nobody reads them here.
        chain_params.no_perf = True
        self._chain: Any = llama_cpp.llama_sampler_chain_init(chain_params)
        self.uses_history = params.repeat_penalty != 1.0
        self._history = max(params.repeat_last_n, 1)
        add = self._add
        if self.uses_history:
            n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
            add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0
                )
            )
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
        """Feed the prompt to the penalty history (only when a penalty is asked for)."""
        if self.uses_history:
            for token in tokens[-self._history :]:
                llama_cpp.llama_sampler_accept(self._chain, token)

    def sample(self, ctx: Any, batch_index: int) -> int:
        """Draw the next token from the logits of batch row batch_index (and accept it)."""
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
