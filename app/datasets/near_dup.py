"""Near-duplicate texts by MinHash and LSH banding, vectorised with numpy.

Each text becomes a set of word 3-gram shingles (lower-cased \\w+ tokens; a text shorter
than three words is one shingle of its words); a MinHash signature of NUM_PERM 32-bit
values estimates the Jaccard similarity of two such sets. Banding (BANDS bands of
ROWS_PER_BAND values) proposes candidate pairs, each checked against the full signatures;
pairs whose estimated similarity reaches the threshold are joined into clusters, and each
cluster keeps its earliest text. Whole arrays per step, so 1M short prompts take seconds,
not hours (bench/dedup_bench.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

NUM_PERM = 64
BANDS = 16
ROWS_PER_BAND = NUM_PERM // BANDS
SHINGLE_WORDS = 3
# Texts per chunk while hashing: bounds memory (about 100 MB at prompt lengths).
CHUNK = 100_000
WORD = re.compile(r"\w+")
U64 = np.uint64
DedupProgress = Callable[[int, int], None]


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser: spreads token ids and shingle sums over all 64 bits."""
    x = x ^ (x >> U64(30))
    x = x * U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> U64(27))
    x = x * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))


def _permutations(seed: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """NUM_PERM multiply-shift hash functions h(x) = (a*x + b) >> 32, a odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=NUM_PERM, dtype=np.uint64) * U64(2) + U64(1)
    b = rng.integers(0, 2**63, size=NUM_PERM, dtype=np.uint64)
    return a, b


def _shingles(
    texts: Sequence[str], vocab: dict[str, int]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Hashes of every text's shingles (flat), each text's first index, and which texts had
    any word. A text of n words has max(n - 2, 1) shingles: its word 3-grams, or for a
    shorter text its words padded; padding between texts keeps windows inside one text."""
    pad = SHINGLE_WORDS - 1
    ids: list[int] = []
    counts = np.empty(len(texts), dtype=np.intp)
    has_words = np.ones(len(texts), dtype=bool)
    setdefault = vocab.setdefault
    for i, text in enumerate(texts):
        words = WORD.findall(text.lower())
        if not words:
            has_words[i] = False
            words = [""]
        ids.extend([setdefault(w, len(vocab) + 1) for w in words])
        ids.extend([0] * pad)  # 0 is no word: the padding
        counts[i] = len(words)
    flat = _mix(np.asarray(ids, dtype=np.uint64))
    # Window starts: the first max(n - pad, 1) words of each text.
    windows = np.maximum(counts - pad, 1)
    text_start = np.concatenate(([0], np.cumsum(counts + pad)[:-1]))
    starts = np.repeat(text_start, windows) + (
        np.arange(windows.sum()) - np.repeat(np.cumsum(windows) - windows, windows)
    )
    h = np.zeros(len(starts), dtype=np.uint64)
    for k in range(SHINGLE_WORDS):
        # Position-weighted sum of the words: "a b c" and "c b a" differ.
        h = h + flat[starts + k] * U64(2 * k + 0x9E3779B97F4A7C15)
    first = np.concatenate(([0], np.cumsum(windows)[:-1])).astype(np.intp)
    return _mix(h), first, has_words


def signatures(
    texts: Sequence[str], seed: int = 1, progress: DedupProgress | None = None
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.bool_]]:
    """The MinHash signature of each text (rows) and whether it had any word."""
    a, b = _permutations(seed)
    sig = np.empty((len(texts), NUM_PERM), dtype=np.uint32)
    has_words = np.ones(len(texts), dtype=bool)
    vocab: dict[str, int] = {}
    for lo in range(0, len(texts), CHUNK):
        hi = min(lo + CHUNK, len(texts))
        shingles, first, words = _shingles(texts[lo:hi], vocab)
        has_words[lo:hi] = words
        for p in range(NUM_PERM):
            hashed = ((shingles * a[p] + b[p]) >> U64(32)).astype(np.uint32)
            sig[lo:hi, p] = np.minimum.reduceat(hashed, first)
        if progress is not None:
            progress(hi, len(texts))
    return sig, has_words


def _band_keys(sig: npt.NDArray[np.uint32], band: int) -> npt.NDArray[np.uint64]:
    cols = sig[:, band * ROWS_PER_BAND : (band + 1) * ROWS_PER_BAND].astype(np.uint64)
    key = np.full(len(sig), band, dtype=np.uint64)
    for j in range(ROWS_PER_BAND):
        key = _mix(key ^ cols[:, j])
    return key


def _candidate_pairs(
    sig: npt.NDArray[np.uint32], usable: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int64]:
    """(earlier, later) index pairs sharing a band: each text with its bucket's first."""
    index = np.flatnonzero(usable)
    pairs = []
    for band in range(BANDS):
        keys = _band_keys(sig[index], band)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        new_bucket = np.empty(len(order), dtype=bool)
        new_bucket[:1] = True
        new_bucket[1:] = sorted_keys[1:] != sorted_keys[:-1]
        bucket_first = order[np.flatnonzero(new_bucket)][np.cumsum(new_bucket) - 1]
        member = bucket_first != order
        pairs.append(np.stack([index[bucket_first[member]], index[order[member]]], axis=1))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    joined = np.concatenate(pairs).astype(np.int64)
    return np.unique(joined, axis=0)


def _similar(
    sig: npt.NDArray[np.uint32], pairs: npt.NDArray[np.int64], threshold: float
) -> npt.NDArray[np.int64]:
    keep = np.empty(len(pairs), dtype=bool)
    for lo in range(0, len(pairs), 200_000):
        chunk = pairs[lo : lo + 200_000]
        agree = (sig[chunk[:, 0]] == sig[chunk[:, 1]]).mean(axis=1)
        keep[lo : lo + 200_000] = agree >= threshold
    return pairs[keep]


def _cluster_roots(n: int, edges: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each node's cluster label: the smallest index connected to it."""
    label = np.arange(n, dtype=np.int64)
    if len(edges) == 0:
        return label
    a, b = edges[:, 0], edges[:, 1]
    while True:
        low = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, a, low)
        np.minimum.at(label, b, low)
        label = label[label]  # pointer jumping
        if np.array_equal(label, before):
            return label


def near_duplicates(
    texts: Sequence[str],
    threshold: float = 0.8,
    seed: int = 1,
    progress: DedupProgress | None = None,
) -> npt.NDArray[np.bool_]:
    """A mask of the texts to drop: each is estimated at >= threshold Jaccard similarity
    (word 3-gram shingles) to an earlier text of its cluster. Texts without a word are
    never dropped (the length filter is there for them)."""
    if not 0 < threshold <= 1:
        raise ValueError("the near-duplicate threshold is a similarity in (0, 1]")
    if not texts:
        return np.zeros(0, dtype=bool)
    sig, has_words = signatures(texts, seed, progress)
    edges = _similar(sig, _candidate_pairs(sig, has_words), threshold)
    label = _cluster_roots(len(texts), edges)
    dropped: npt.NDArray[np.bool_] = label != np.arange(len(texts))
    return dropped
