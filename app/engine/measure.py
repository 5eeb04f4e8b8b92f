"""Measure a loaded model the way llama.cpp's tools do: perplexity (llama-perplexity) and
prompt/generation speed (llama-bench pp/tg), with llama.cpp's low-level decode API."""

from __future__ import annotations

import ctypes
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from app.engine.cpu_buffers import ExtraBuffers, new_llama
from app.engine.errors import ModelLoadError
from app.engine.llama_log import LlamaLog
from app.engine.loader import chat_formatter


class MeasureError(ValueError):
    """A measurement cannot be made as asked (text too short, decode failed)."""


@dataclass(frozen=True)
class Perplexity:
    """Perplexity over non-overlapping windows, scoring the second half of each."""

    perplexity: float
    mean_nll: float
    # Standard error of the mean NLL per token, as llama-perplexity prints it.
    nll_stderr: float
    tokens_scored: int
    windows: int
    n_ctx: int
    text_tokens: int


@dataclass(frozen=True)
class Speed:
    """Tokens per second: a prompt of n_prompt tokens in one batch, n_gen single decodes."""

    prefill_tps: float
    decode_tps: float
    n_prompt: int
    n_gen: int


class Measured:
    """A model loaded for measuring: one context of n_ctx tokens, batch = n_ctx."""

    def __init__(
        self,
        path: Path,
        n_ctx: int,
        n_threads: int | None,
        n_gpu_layers: int = 0,
        extra_buffers: ExtraBuffers = ExtraBuffers.AUTO,
    ):
        self._log = LlamaLog()
        self._log.install()
        try:
            self.llama = new_llama(
                extra_buffers,
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=min(n_ctx, 512),
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_gpu_layers=n_gpu_layers,
                # Flash attention, as llama-bench and llama-perplexity use it by default and
                # the workers' batched contexts do ('auto' turns it on for the CPU and for
                # GPUs that support it); llama-cpp-python's Llama turns it off unless asked.
                flash_attn=True,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            errors = "; ".join(self._log.errors()) or str(exc)
            self._log.restore()
            raise ModelLoadError(errors) from exc
        self.n_ctx = n_ctx
        self.ctx = self.llama.ctx
        self.vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))

    def close(self) -> None:
        self.llama.close()
        self._log.restore()

    def __enter__(self) -> Measured:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def tokenize(self, text: str) -> list[int]:
        """Tokens of text with BOS when the model's vocabulary asks for one (as
        llama-perplexity's common_tokenize(ctx, text, true))."""
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def _clear(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def _decode(self, tokens: list[int], start_pos: int, logits_from: int | None) -> None:
        """Decode tokens at positions start_pos.. in sequence 0; logits for indexes >=
        logits_from (None: only the last)."""
        n = len(tokens)
        batch = llama_cpp.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = start_pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                wanted = i == n - 1 if logits_from is None else i >= logits_from
                batch.logits[i] = 1 if wanted else 0
            status = llama_cpp.llama_decode(self.ctx, batch)
            if status != 0:
                raise MeasureError(f"llama_decode failed with status {status}")
        finally:
            llama_cpp.llama_batch_free(batch)

    def _logits(self, i: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, i)
        array = np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        )
        return array

    def perplexity(
        self, tokens: list[int], on_window: Callable[[int, int], None] | None = None
    ) -> Perplexity:
        """llama-perplexity's method: windows of n_ctx tokens that do not overlap, the first
        token of each replaced by BOS when the vocabulary adds one, and the NLL of every
        token in the second half of the window given what precedes it in the window."""
        n_ctx = self.n_ctx
        if len(tokens) < 2 * n_ctx:
            raise MeasureError(
                f"the text is {len(tokens)} tokens; perplexity at context {n_ctx} needs at "
                f"least {2 * n_ctx}"
            )
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        windows = len(tokens) // n_ctx
        first = n_ctx // 2
        nll = nll2 = 0.0
        count = 0
        for w in range(windows):
            window = tokens[w * n_ctx : (w + 1) * n_ctx]
            if add_bos:
                window = [bos, *window[1:]]
            self._clear()
            self._decode(window, 0, logits_from=first)
            for i in range(first, n_ctx - 1):
                logits = self._logits(i).astype(np.float64)
                top = logits.max()
                log_z = top + math.log(float(np.exp(logits - top).sum()))
                value = log_z - logits[window[i + 1]]
                nll += value
                nll2 += value * value
                count += 1
            if on_window is not None:
                on_window(w + 1, windows)
        mean = nll / count
        variance = nll2 / count - mean * mean
        stderr = math.sqrt(variance / (count - 1)) if count > 1 and variance > 0 else 0.0
        return Perplexity(
            perplexity=math.exp(mean),
            mean_nll=mean,
            nll_stderr=stderr,
            tokens_scored=count,
            windows=windows,
            n_ctx=n_ctx,
            text_tokens=len(tokens),
        )

    def chat_tokens(
        self, messages: list[dict[str, str]], answer: str
    ) -> tuple[list[int], list[int]]:
        """(prompt tokens through the model's chat template with the generation prompt,
        answer tokens): what a worker would feed and what the model should produce."""
        formatter = chat_formatter(self.llama)
        if formatter is not None:
            chat: list[Any] = list(messages)
            formatted = formatter(messages=chat)
            prompt = list(self.llama.tokenize(formatted.prompt.encode("utf-8"),
                                              add_bos=not formatted.added_special,
                                              special=True))  # fmt: skip
        else:
            plain = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
            prompt = self.tokenize(plain)
        answer_tokens = list(self.llama.tokenize(answer.encode("utf-8"), add_bos=False,
                                                 special=False))  # fmt: skip
        return prompt, answer_tokens

    def mean_loglik(self, prompt: list[int], answer: list[int]) -> tuple[float, int]:
        """Sum of log p(answer token | prompt, answer so far), and the tokens scored (the
        start of a long prompt is cut so that prompt and answer fit the context)."""
        if not answer:
            return 0.0, 0
        sequence = (prompt + answer)[-self.n_ctx :]
        start = len(sequence) - len(answer)
        if start < 1:
            raise MeasureError("the answer alone fills the context")
        self._clear()
        self._decode(sequence, 0, logits_from=start - 1)
        total = 0.0
        for i in range(start - 1, len(sequence) - 1):
            logits = self._logits(i).astype(np.float64)
            top = logits.max()
            total += logits[sequence[i + 1]] - top - math.log(float(np.exp(logits - top).sum()))
        return total, len(sequence) - start

    def greedy(self, prompt: list[int], max_tokens: int) -> tuple[str, int]:
        """(text, tokens) the model generates after prompt, always taking the most likely
        token, until an end-of-generation token or max_tokens; the start of a long prompt
        is cut so that prompt and answer fit the context."""
        if max_tokens < 1 or max_tokens >= self.n_ctx:
            raise MeasureError(f"{max_tokens} answer tokens do not fit a context of {self.n_ctx}")
        prompt = prompt[-(self.n_ctx - max_tokens) :]
        self._clear()
        self._decode(prompt, 0, logits_from=None)
        produced: list[int] = []
        for _ in range(max_tokens):
            # -1: the last output of the latest decode (the prompt's end, then each token).
            token = int(np.argmax(self._logits(-1)))
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                break
            produced.append(token)
            if len(produced) == max_tokens:
                break
            self._decode([token], len(prompt) + len(produced) - 1, logits_from=None)
        data = self.llama.detokenize(produced, special=False)
        return data.decode("utf-8", errors="replace"), len(produced)

    def speed(self, n_prompt: int = 512, n_gen: int = 128, repeats: int = 1) -> Speed:
        """llama-bench's pp and tg: random tokens, an empty context each run, the mean over
        repeats after one warm-up run."""
        if n_prompt > self.n_ctx or n_gen > self.n_ctx:
            raise MeasureError(f"pp{n_prompt}/tg{n_gen} do not fit a context of {self.n_ctx}")
        rng = random.Random(0)
        prompt = [rng.randrange(self.n_vocab) for _ in range(n_prompt)]
        total_pp = total_tg = 0.0
        for run in range(repeats + 1):
            self._clear()
            started = time.perf_counter()
            for at in range(0, n_prompt, 512):
                self._decode(prompt[at : at + 512], at, logits_from=None)
            llama_cpp.llama_synchronize(self.ctx)
            pp = time.perf_counter() - started
            self._clear()
            token = prompt[0]
            started = time.perf_counter()
            for i in range(n_gen):
                self._decode([token], i, logits_from=None)
            llama_cpp.llama_synchronize(self.ctx)
            tg = time.perf_counter() - started
            if run > 0:  # the first run warms caches, as llama-bench's warm-up does
                total_pp += pp
                total_tg += tg
        return Speed(n_prompt * repeats / total_pp, n_gen * repeats / total_tg, n_prompt, n_gen)
