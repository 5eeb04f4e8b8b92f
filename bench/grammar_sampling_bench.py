"""Sampler cost per token of JSON-schema-constrained decoding, on the demo model's real logits.

Three samplers pick the same greedy tokens (tests/test_grammar_sampling.py checks that):
- grammar first: llama.cpp's grammar sampler at the head of the chain, which masks the whole
  vocabulary every step (Herd before this change);
- sample, then check: app.engine.sampler_chain.SamplerChain (llama-server's scheme, with a
  shortlist redraw when the grammar refuses the drawn token);
- free: the same chain without a grammar (the floor).

Reports the sampler's CPU time per token (thread CPU time, so other load on the machine
barely moves it) beside the model's decode CPU time per token, and how often the grammar
refused the drawn token. No HTTP, no scheduler: only what the sampler costs.

Example: python bench/grammar_sampling_bench.py --tokens 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import llama_cpp
from llama_cpp import Llama
from structured_bench import MESSAGES, SCHEMA

from app.engine.cpu_buffers import new_llama
from app.engine.grammar import grammar_sampler
from app.engine.json_grammar import schema_to_gbnf
from app.engine.requests import SamplingParams
from app.engine.sampler_chain import SamplerChain
from app.store.demo import find_demo_model


def run(llm: Llama, prompt: list[int], tokens: int, sample: Callable[[], int]) -> dict[str, float]:
    llm.reset()
    llm.eval(prompt)
    sample_s = decode_s = 0.0
    n = 0
    for _ in range(tokens):
        t0 = time.thread_time()
        token = sample()
        t1 = time.thread_time()
        sample_s += t1 - t0
        n += 1
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        t1 = time.thread_time()
        llm.eval([token])
        decode_s += time.thread_time() - t1
    return {"sample_us": sample_s / n * 1e6, "decode_us": decode_s / max(n - 1, 1) * 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    llm = new_llama(model_path=str(find_demo_model().path), n_ctx=512, n_threads=1, verbose=False)
    vocab = llm._model.vocab
    chat = f"<|im_start|>user\n{MESSAGES[0]['content']}<|im_end|>\n<|im_start|>assistant\n"
    prompt = llm.tokenize(chat.encode(), special=True)
    gbnf = schema_to_gbnf(json.dumps(SCHEMA))
    greedy = SamplingParams(temperature=0)
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        first: Any = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        llama_cpp.llama_sampler_chain_add(first, grammar_sampler(vocab, gbnf))
        llama_cpp.llama_sampler_chain_add(first, llama_cpp.llama_sampler_init_greedy())
        ours, free = SamplerChain(greedy, vocab, gbnf), SamplerChain(greedy, vocab)
        samplers: dict[str, Callable[[], int]] = {
            "grammar first": lambda f=first: int(llama_cpp.llama_sampler_sample(f, llm.ctx, -1)),
            "sample, then check": lambda s=ours: s.sample(llm.ctx, -1),
            "free": lambda s=free: s.sample(llm.ctx, -1),
        }
        for name, sample in samplers.items():
            results.setdefault(name, []).append(run(llm, prompt, args.tokens, sample))
        llama_cpp.llama_sampler_free(first)
        ours.close()
        free.close()
    print(f"demo model, greedy, {args.tokens} tokens, median of {args.rounds} rounds, CPU time")
    for name, rounds in results.items():
        sample_us = statistics.median(r["sample_us"] for r in rounds)
        decode_us = statistics.median(r["decode_us"] for r in rounds)
        print(
            f"{name:20s} sampler {sample_us:8.0f} us/token   decode {decode_us:6.0f} us/token   "
            f"sampler share of a token {sample_us / (sample_us + decode_us):5.1%}"
        )
    llm.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
