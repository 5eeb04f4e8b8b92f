"""Prompt-lookup drafts: guess a sequence's next tokens from where its recent tokens occurred
before (llama.cpp's lookup decoding, examples/lookup, reduced to its prompt n-gram part).

An answer that copies spans of its prompt (extraction, quoting, editing code) repeats n-grams
the sequence already holds: the tokens that followed the last occurrence of the current
suffix are a cheap guess at what comes next. The batched engine decodes the guesses (drafts)
as extra rows beside the pending token and keeps those the sampler confirms
(batched.BatchedEngine._sample), so a copied span costs one decode for several tokens.

Pure Python, no llama.cpp: NgramIndex finds the drafts, DraftPacer decides how many to try.
"""

from __future__ import annotations

from collections.abc import Iterable

# Longest and shortest suffix looked up: longer matches first (they predict better); a
# single token repeats too often to predict anything, so the shortest is two.
NGRAM_MAX = 3
NGRAM_MIN = 2
# Drafts per verification: at most MAX_DRAFT, starting at START_DRAFT. On a CPU each draft
# row costs about a fifth of a one-token decode (bench/RESULTS.md), so long runs of wrong
# guesses are what the pacer avoids.
MAX_DRAFT = 8
START_DRAFT = 4
# After this many verifications in a row that confirmed nothing, drafting pauses: for
# 2, 4, ... up to MAX_PAUSE steps, doubling while guesses keep failing.
MISSES_BEFORE_PAUSE = 2
MAX_PAUSE = 64


class NgramIndex:
    """Where each recent n-gram (NGRAM_MIN..NGRAM_MAX tokens) of one sequence last occurred.

    Only n-grams with a known next token are indexed, so the suffix being looked up never
    finds itself: n-gram tokens[i-n:i] is recorded (continuation at i) when token i arrives.
    """

    def __init__(self, tokens: Iterable[int] = (), n_max: int = NGRAM_MAX) -> None:
        if n_max < NGRAM_MIN:
            raise ValueError(f"n_max must be >= {NGRAM_MIN}")
        self._n_max = n_max
        self.tokens: list[int] = []
        # n-gram -> index of the token that followed its latest occurrence.
        self._follow: dict[tuple[int, ...], int] = {}
        # Where the last draft was read from, and the sequence's length then (see draft).
        self._source = 0
        self._length = -1
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens (the prompt, then each token the sequence outputs)."""
        seq = self.tokens
        follow = self._follow
        for token in tokens:
            i = len(seq)
            for n in range(NGRAM_MIN, min(self._n_max, i) + 1):
                follow[tuple(seq[i - n : i])] = i
            seq.append(token)

    def draft(self, k: int) -> list[int]:
        """Up to k tokens from where the sequence is copying: the span after the last draft's
        source while the tokens since match it (a copy goes on from where it was, even where
        its recent n-grams also occur elsewhere, as the digits of numbers do); else what
        followed the latest earlier occurrence of the longest suffix (NGRAM_MAX down to
        NGRAM_MIN tokens) seen before; [] when none was."""
        if k <= 0:
            return []
        seq = self.tokens
        end = len(seq)
        start = self._source + end - self._length
        n = min(self._n_max, end)
        if not (self._length >= 0 and n <= start < end and seq[start - n : start] == seq[-n:]):
            start = self._lookup()
        if start < 0:
            self._length = -1
            return []
        self._source, self._length = start, end
        return seq[start : start + k]

    def _lookup(self) -> int:
        """Where the latest earlier occurrence of the longest suffix went on, or -1."""
        seq = self.tokens
        for n in range(min(self._n_max, len(seq)), NGRAM_MIN - 1, -1):
            start = self._follow.get(tuple(seq[-n:]))
            if start is not None:
                return start
        return -1


class DraftPacer:
    """How many drafts one request tries next, from how its earlier drafts fared.

    After a fully confirmed draft the next may be twice as long (up to MAX_DRAFT); after a
    partly confirmed one, one longer than what was confirmed. MISSES_BEFORE_PAUSE
    verifications in a row that confirmed nothing pause drafting for a number of steps that
    doubles with each further miss (up to MAX_PAUSE): on output that copies nothing, drafting
    soon costs next to nothing, and it comes back when copying starts.
    """

    def __init__(self) -> None:
        self.size = START_DRAFT
        self._misses = 0
        self._pause = 0
        self._paused_for = 0

    def wanted(self) -> int:
        """Drafts to try at this step (0 while paused); call once per step."""
        if self._paused_for > 0:
            self._paused_for -= 1
            return 0
        return self.size

    def record(self, drafted: int, accepted: int) -> None:
        """The outcome of one verification: drafted tokens tried, accepted of them."""
        if drafted <= 0:
            return
        if accepted >= drafted:
            self.size = min(MAX_DRAFT, 2 * self.size)
        else:
            self.size = max(1, min(MAX_DRAFT, accepted + 1))
        if accepted > 0:
            self._misses = 0
            self._pause = 0
            return
        self._misses += 1
        if self._misses >= MISSES_BEFORE_PAUSE:
            self._pause = min(MAX_PAUSE, max(2, 2 * self._pause))
            self._paused_for = self._pause
