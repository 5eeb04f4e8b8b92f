"""A reusable llama_batch: tokens of several sequences for one llama_decode call."""

from __future__ import annotations

from typing import Any

import llama_cpp


class TokenBatch:
    """llama_batch_init'ed once with room for capacity tokens; clear() and refill per step."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._batch: Any = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n_tokens = 0

    @property
    def native(self) -> Any:
        return self._batch

    def clear(self) -> None:
        self.n_tokens = 0
        self._batch.n_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, wants_logits: bool) -> int:
        """Append one token; returns its row, which is the index to sample from."""
        i = self.n_tokens
        if i >= self.capacity:
            raise IndexError("the batch is full")
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = wants_logits
        self.n_tokens = i + 1
        batch.n_tokens = i + 1
        return i

    def add_run(self, tokens: list[int], first_pos: int, seq_id: int, logits_last: bool) -> int:
        """Append consecutive tokens of one sequence; returns the row of the last one."""
        n = len(tokens)
        i = self.n_tokens
        if i + n > self.capacity:
            raise IndexError("the batch is full")
        batch = self._batch
        token, pos, n_seq, seq, logits = (
            batch.token,
            batch.pos,
            batch.n_seq_id,
            batch.seq_id,
            batch.logits,
        )
        for k, t in enumerate(tokens):
            row = i + k
            token[row] = t
            pos[row] = first_pos + k
            n_seq[row] = 1
            seq[row][0] = seq_id
            logits[row] = 0
        if logits_last and n:
            logits[i + n - 1] = 1
        self.n_tokens = i + n
        batch.n_tokens = i + n
        return i + n - 1

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
