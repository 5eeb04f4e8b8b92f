"""Token candidate arrays for running llama.cpp samplers outside llama_sampler_sample.

llama_sampler_sample builds a llama_token_data array from a logits row and runs one chain
over it. Grammar-constrained sampling (sampler_chain.py) needs other orders: the chain
before the grammar, the grammar on a shortlist of the likeliest tokens only. These arrays
are allocated once per request and refilled from the logits with numpy.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np

# llama_token_data as numpy sees it: {int32 id; float logit; float p}.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class TokenArray:
    """A llama_token_data_array over a numpy buffer of up to capacity tokens."""

    def __init__(self, capacity: int) -> None:
        self.data = np.zeros(capacity, dtype=TOKEN_DATA)
        pointer = self.data.ctypes.data_as(llama_cpp.llama_token_data_p)
        self._native = llama_cpp.llama_token_data_array(pointer, capacity, -1, False)

    def fill(self, ids: np.ndarray, logits: np.ndarray) -> None:
        """Hold these tokens with these logits, unsorted, nothing selected."""
        n = len(ids)
        data = self.data
        data["id"][:n] = ids
        data["logit"][:n] = logits
        data["p"][:n] = 0.0
        native = self._native
        # Samplers sort and shrink the array in place: every use starts from a fresh fill.
        native.size = n
        native.selected = -1
        native.sorted = False

    def apply(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(self._native))

    @property
    def size(self) -> int:
        return int(self._native.size)

    def logits(self) -> np.ndarray:
        """The current logits (after the samplers applied so far), in array order."""
        return self.data["logit"][: self.size]

    def selected_token(self) -> int:
        selected = int(self._native.selected)
        assert 0 <= selected < self.size, "no sampler selected a token"
        return int(self.data["id"][selected])


class Candidates:
    """The whole vocabulary and a shortlist of its likeliest tokens, for one request."""

    def __init__(self, n_vocab: int, shortlist: int) -> None:
        self.n_vocab = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self.vocab = TokenArray(n_vocab)
        self.short = TokenArray(min(shortlist, n_vocab))

    def logits_row(self, pointer: Any) -> np.ndarray:
        """A numpy view (no copy) of a logits row llama.cpp returned."""
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def fill_vocab(self, logits: np.ndarray) -> TokenArray:
        self.vocab.fill(self._ids, logits)
        return self.vocab

    def fill_short(self, ids: np.ndarray, logits: np.ndarray) -> TokenArray:
        """The shortlist: the len(short) tokens of ids with the highest logits."""
        k = len(self.short.data)
        if k < len(ids):
            top = np.argpartition(logits, len(ids) - k)[len(ids) - k :]
            ids, logits = ids[top], logits[top]
        self.short.fill(ids, logits)
        return self.short

    def all_ids(self) -> np.ndarray:
        return self._ids
