"""Grammar-constrained sampling (app/engine/sampler_chain.py) picks, token for token, what
llama-server's scheme picks (common_sampler_sample: draw, check the drawn token, redraw over
the whole vocabulary with the grammar's mask when it is refused), and greedy picks what the
grammar-first chain picks, on real logits of the demo model."""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp
import numpy as np
import pytest
from llama_cpp import Llama

from app.engine.cpu_buffers import new_llama
from app.engine.grammar import grammar_sampler
from app.engine.json_grammar import schema_to_gbnf
from app.engine.requests import SamplingParams
from app.engine.sampler_chain import SamplerChain
from app.store.demo import find_demo_model
from tests.openai_schemas import SCHEMAS

STEPS = 40


@pytest.fixture(scope="module")
def llm() -> Iterator[Llama]:
    model = new_llama(model_path=str(find_demo_model().path), n_ctx=512, verbose=False)
    yield model
    model.close()


def prompt_tokens(llm: Llama, schema: dict[str, Any]) -> list[int]:
    text = (
        "<|im_start|>user\nAnswer as JSON matching this schema: "
        f"{json.dumps(schema)}<|im_end|>\n<|im_start|>assistant\n"
    )
    return llm.tokenize(text.encode(), special=True)


class LlamaServerScheme:
    """common_sampler_sample with grammar_first false, written with llama.cpp's samplers over
    the whole vocabulary: the independent reference."""

    def __init__(self, params: SamplingParams, vocab: Any, gbnf: str) -> None:
        self._owner = SamplerChain(params, vocab)
        self.chain = self._owner._chain
        self.grammar = grammar_sampler(vocab, gbnf)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))

    def _whole(self, logits: np.ndarray, samplers: list[Any]) -> int:
        data = (llama_cpp.llama_token_data * self.n_vocab)()
        view = np.frombuffer(data, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        view["id"] = np.arange(self.n_vocab)
        view["logit"] = logits
        array = llama_cpp.llama_token_data_array(data, self.n_vocab, -1, False)
        for sampler in samplers:
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        return int(data[array.selected].id)

    def sample(self, ctx: Any) -> int:
        pointer = llama_cpp.llama_get_logits_ith(ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()
        token = self._whole(logits, [self.chain])
        single = llama_cpp.llama_token_data(token, 1.0, 0.0)
        one = llama_cpp.llama_token_data_array(ctypes.pointer(single), 1, -1, False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(one))
        if single.logit == -math.inf:
            token = self._whole(logits, [self.grammar, self.chain])
        llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.grammar)
        self._owner.close()


def generate(llm: Llama, prompt: list[int], sample: Callable[[], int]) -> tuple[list[int], int]:
    """Tokens drawn by sample() from the model's logits, and how many steps the grammar
    overruled the model's likeliest token."""
    llm.reset()
    llm.eval(prompt)
    tokens, overruled = [], 0
    for _ in range(STEPS):
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)
        )
        likeliest = int(logits.argmax())
        token = sample()
        overruled += token != likeliest
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        tokens.append(token)
        llm.eval([token])
    return tokens, overruled


SETTINGS = [
    SamplingParams(temperature=0),
    SamplingParams(temperature=0.8, seed=7),
    SamplingParams(temperature=1.0, top_k=0, top_p=0.9, seed=3),
    SamplingParams(
        temperature=0.7, seed=11, frequency_penalty=0.5, repeat_penalty=1.1, logit_bias=((13, 5.0),)
    ),
]


@pytest.mark.parametrize("params", SETTINGS, ids=["greedy", "top_k", "top_p", "penalties"])
def test_constrained_sampling_matches_llama_servers_scheme(
    llm: Llama, params: SamplingParams
) -> None:
    vocab = llm._model.vocab
    overruled = 0
    for schema in (SCHEMAS[0], SCHEMAS[5], SCHEMAS[9], SCHEMAS[14]):
        gbnf = schema_to_gbnf(json.dumps(schema))
        prompt = prompt_tokens(llm, schema)
        ours = SamplerChain(params, vocab, gbnf)
        reference = LlamaServerScheme(params, vocab, gbnf)
        try:
            got, n = generate(llm, prompt, lambda s=ours: s.sample(llm.ctx, -1))
            want, _ = generate(llm, prompt, lambda r=reference: r.sample(llm.ctx))
        finally:
            ours.close()
            reference.close()
        assert got == want, (schema, llm.detokenize(got), llm.detokenize(want))
        overruled += n
    # The redraw path ran: the grammar refused the model's own choice somewhere.
    assert overruled > 0


def test_greedy_constrained_sampling_matches_the_grammar_first_chain(llm: Llama) -> None:
    vocab = llm._model.vocab
    for schema in SCHEMAS[:6]:
        gbnf = schema_to_gbnf(json.dumps(schema))
        prompt = prompt_tokens(llm, schema)
        ours = SamplerChain(SamplingParams(temperature=0), vocab, gbnf)
        first = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(first, grammar_sampler(vocab, gbnf))
        llama_cpp.llama_sampler_chain_add(first, llama_cpp.llama_sampler_init_greedy())
        try:
            got, _ = generate(llm, prompt, lambda s=ours: s.sample(llm.ctx, -1))
            want, _ = generate(
                llm, prompt, lambda f=first: int(llama_cpp.llama_sampler_sample(f, llm.ctx, -1))
            )
        finally:
            ours.close()
            llama_cpp.llama_sampler_free(first)
        assert got == want, schema
