"""The llama_decode calls of one batched step: the mixed decode, packed prompt chunks, one chunk.

Each call fills the context's one llama_batch, decodes it, and keeps every slot's kv_tokens
equal to what its KV cells hold, also when llama.cpp fails part of the way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from app.engine.batch_context import BatchContext
from app.engine.batch_job import Running, wants_logits
from app.engine.prompt_chunks import chunk_end
from app.engine.step_costs import StepCosts

logger = logging.getLogger(__name__)


class StepDecoder:
    """Decodes into one context; fail(r, reason) releases a job whose decode failed."""

    def __init__(self, context: BatchContext, fail: Callable[[Running, str], None]) -> None:
        self._context = context
        self._step = context.shape.n_batch
        self._fail = fail
        # Decodes that held several prompts' chunks, or prompt chunks beside next tokens
        # (tests read it to know packing happened).
        self.packed_decodes = 0
        self.costs = StepCosts()

    def decode_tokens(self, generating: list[Running]) -> list[Running]:
        """Decode the next token of every generating job in one llama_decode; returns the
        jobs that have logits to sample (all of them, unless llama.cpp failed)."""
        return self.decode_step(generating, [])

    def decode_step(self, generating: list[Running], chunks: list[Chunk]) -> list[Running]:
        """One llama_decode for the whole step: the next token of every generating job and the
        given prompt chunks (packable ones: prompt_chunks.pack), in slot order; returns the
        generating jobs that have logits to sample. A prompt whose chunk completes it gets
        r.row for its first token; a failed decode leaves the prompts as they were (they
        then decode alone) and retries the generating jobs one by one.

        A job with drafts (r.drafts, see lookup_drafts.py) gets them as further rows of its
        sequence after its next token, each with logits: r.row is the first, the drafts'
        rows follow it, and kv_tokens then hold them all until _sample drops the rejected.
        """
        batch = self._context.batch
        batch.clear()
        prompt_rows: dict[int, int] = {}
        # Slot order: llama.cpp puts consecutive sequence ids into one micro-batch.
        for seq, r, end in sorted(_rows(generating, chunks), key=lambda e: e[0]):
            if end is None:
                assert r.next_token is not None
                pos = len(r.slot.kv_tokens)
                r.row = batch.add(r.next_token, pos, seq, True)
                for i, draft in enumerate(r.drafts, 1):
                    batch.add(draft, pos + i, seq, True)
            else:
                run = r.tokens[r.prefilled : end]
                prompt_rows[seq] = batch.add_run(run, r.prefilled, seq, wants_logits(r, end))
        n_prompt = sum(end - r.prefilled for r, end in chunks)
        rc = self._timed(n_prompt, batch.n_tokens - n_prompt)
        if rc == 0:
            for r in generating:
                assert r.next_token is not None
                r.slot.kv_tokens.append(r.next_token)
                r.slot.kv_tokens.extend(r.drafts)
            for r, end in chunks:
                wants = wants_logits(r, end)
                r.slot.kv_tokens.extend(r.tokens[r.prefilled : end])
                r.prefilled = end
                r.row = prompt_rows[r.slot.seq_id] if wants else None
            if len(chunks) > 1 or (chunks and generating):
                self.packed_decodes += 1
            return generating
        for r, _end in chunks:
            self._context.forget(r.slot.seq_id, len(r.slot.kv_tokens))
            # From the next step on each decodes alone, so only the culprit fails.
            r.pack = False
            r.row = None
        # Undo whatever part was stored, then decode each alone to find the culprits.
        logger.warning(
            "llama_decode failed (%d) for %d sequences; retrying each", rc, len(generating)
        )
        for r in generating:
            self._context.forget(r.slot.seq_id, len(r.slot.kv_tokens))
            r.drafts = []
        survivors = []
        for r in generating:
            assert r.next_token is not None
            batch.clear()
            r.row = batch.add(r.next_token, len(r.slot.kv_tokens), r.slot.seq_id, True)
            rc = self._context.decode()
            if rc == 0:
                r.slot.kv_tokens.append(r.next_token)
                survivors.append(r)
            else:
                self._fail(r, f"llama_decode returned {rc}")
        return survivors

    def prefill_packed(self, jobs: list[Running], at_most: int | None = None) -> int:
        """Decode the next (short) prompt chunk of every job in one llama_decode, as
        llama-server does with new prompts; returns the tokens decoded (0 on a failure: the
        jobs then retry one by one)."""
        batch = self._context.batch
        batch.clear()
        ends = [chunk_end(r, self._step, at_most) for r in jobs]
        rows = [
            batch.add_run(
                r.tokens[r.prefilled : end], r.prefilled, r.slot.seq_id, wants_logits(r, end)
            )
            for r, end in zip(jobs, ends, strict=True)
        ]
        if self._timed(batch.n_tokens, 0) != 0:
            logger.warning("llama_decode failed for %d packed prompts; retrying each", len(jobs))
            for r in jobs:
                self._context.forget(r.slot.seq_id, len(r.slot.kv_tokens))
                # From the next step on each decodes alone, so only the culprit fails.
                r.pack = False
                r.row = None
            return 0
        self.packed_decodes += 1
        for r, end, row in zip(jobs, ends, rows, strict=True):
            wants = wants_logits(r, end)
            r.slot.kv_tokens.extend(r.tokens[r.prefilled : end])
            r.prefilled = end
            r.row = row if wants else None
        return batch.n_tokens

    def prefill_chunk(self, r: Running, at_most: int | None = None) -> int:
        """Decode r's next prompt chunk alone (see chunk_end for at_most); returns its size,
        0 if r failed."""
        end = chunk_end(r, self._step, at_most)
        chunk = r.tokens[r.prefilled : end]
        batch = self._context.batch
        batch.clear()
        last = wants_logits(r, end)
        row = batch.add_run(chunk, r.prefilled, r.slot.seq_id, last)
        rc = self._timed(len(chunk), 0)
        if rc != 0:
            self._fail(r, f"llama_decode returned {rc} on the prompt")
            return 0
        r.slot.kv_tokens.extend(chunk)
        r.prefilled = end
        r.row = row if last else None
        return len(chunk)

    def _timed(self, prompt_tokens: int, rows: int) -> int:
        """llama_decode the batch, recording its cost (step_costs.py); llama.cpp's code."""
        started = time.perf_counter()
        rc = self._context.decode()
        if rc == 0:
            self.costs.record(prompt_tokens, rows, time.perf_counter() - started)
        return rc


# A prompt job and where its chunk in this decode ends.
Chunk = tuple[Running, int]


def _rows(generating: list[Running], chunks: list[Chunk]) -> list[tuple[int, Running, int | None]]:
    """(sequence id, job, chunk end or None for a next token) of everything in a step."""
    return [(r.slot.seq_id, r, None) for r in generating] + [
        (r.slot.seq_id, r, end) for r, end in chunks
    ]
