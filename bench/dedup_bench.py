"""Near-duplicate removal over many prompts: Herd's numpy MinHash+LSH against datasketch.

Generates N synthetic prompts (seeded): template questions over a 20k-word vocabulary, of
which about 10% are planted variants of an earlier prompt (case and punctuation changed, a
word appended or the last word replaced, or an exact copy). Times app.datasets.near_dup on
all N, then Herd and the anchor (datasketch's MinHash.bulk + MinHashLSH, same word 3-gram
shingles, 64 permutations, threshold 0.8, keeping each prompt unless an earlier kept one is
a match) on the first --anchor-n prompts, in the same run. Prints seconds, prompts/s, the
ratio, and how many planted variants each found.

    flock /tmp/herd-bench.lock python bench/dedup_bench.py --n 1000000 --anchor-n 50000
"""

from __future__ import annotations

import argparse
import os
import random
import re
import time

import numpy as np

from app.datasets.near_dup import NUM_PERM, near_duplicates

TEMPLATES = [
    "What is the best way to {} my {} when the {} is {}?",
    "Explain how {} works and why {} matters for {} in {}",
    "Can you write a short {} about a {} who loves {} and {}?",
    "Summarise the following: {} {} {} {} {} {}",
    "How do I fix a {} error in {} after updating {} to {}?",
    "Translate into French: the {} {} near the {} was {}",
]


def make_prompts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n prompts and a mask of the planted variants."""
    rnd = random.Random(seed)
    vocab = [f"{rnd.choice('bcdfghklmnprst')}{rnd.choice('aeiou')}{i}" for i in range(20_000)]
    texts: list[str] = []
    planted = np.zeros(n, dtype=bool)
    for i in range(n):
        if i > 100 and rnd.random() < 0.1:
            base = texts[rnd.randrange(i)]
            kind = rnd.randrange(4)
            if kind == 0:
                text = base.upper().rstrip("?") + " ?!"
            elif kind == 1:
                text = base + " " + rnd.choice(vocab)
            elif kind == 2:
                words = base.split()
                text = " ".join([*words[:-1], rnd.choice(vocab)])
            else:
                text = base
            planted[i] = True
        else:
            template = rnd.choice(TEMPLATES)
            fill = [" ".join(rnd.choices(vocab, k=rnd.randint(1, 3))) for _ in range(6)]
            text = template.format(*fill)
        texts.append(text)
    return texts, planted


WORD = re.compile(r"\w+")


def anchor(texts: list[str], threshold: float) -> np.ndarray:
    """datasketch: the same shingles, MinHash.bulk, then query-then-insert into MinHashLSH."""
    from datasketch import MinHash, MinHashLSH

    shingle_sets = []
    for text in texts:
        words = WORD.findall(text.lower())
        grams = {" ".join(words[j : j + 3]) for j in range(max(len(words) - 2, 1))}
        shingle_sets.append([g.encode() for g in grams])
    hashes = MinHash.bulk(shingle_sets, num_perm=NUM_PERM)
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    dropped = np.zeros(len(texts), dtype=bool)
    for i, m in enumerate(hashes):
        if lsh.query(m):
            dropped[i] = True
        else:
            lsh.insert(str(i), m)
    return dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--anchor-n", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}  cpus: {os.cpu_count()}")
    t = time.perf_counter()
    texts, planted = make_prompts(args.n, args.seed)
    words = sum(len(x.split()) for x in texts) / len(texts)
    print(
        f"generated {len(texts):,} prompts ({words:.1f} words on average, "
        f"{planted.sum():,} planted variants) in {time.perf_counter() - t:.1f} s"
    )

    t = time.perf_counter()
    dropped = near_duplicates(texts, args.threshold)
    herd_all = time.perf_counter() - t
    print(
        f"herd  {len(texts):>9,} prompts: {herd_all:7.1f} s ({len(texts) / herd_all:,.0f}/s), "
        f"dropped {dropped.sum():,}, planted found {dropped[planted].mean():.3f}, "
        f"unplanted dropped {dropped[~planted].sum():,}"
    )

    sub, sub_planted = texts[: args.anchor_n], planted[: args.anchor_n]
    t = time.perf_counter()
    herd_sub = near_duplicates(sub, args.threshold)
    herd_s = time.perf_counter() - t
    t = time.perf_counter()
    anchor_sub = anchor(sub, args.threshold)
    anchor_s = time.perf_counter() - t
    for name, mask, secs in (("herd", herd_sub, herd_s), ("datasketch", anchor_sub, anchor_s)):
        print(
            f"{name:10} {len(sub):>9,} prompts: {secs:7.2f} s ({len(sub) / secs:,.0f}/s), "
            f"dropped {mask.sum():,}, planted found {mask[sub_planted].mean():.3f}, "
            f"unplanted dropped {mask[~sub_planted].sum():,}"
        )
    agree = (herd_sub == anchor_sub).mean()
    print(
        f"herd / datasketch time on {len(sub):,}: {herd_s / anchor_s:.3f}x "
        f"(speed-up {anchor_s / herd_s:.1f}x); same decision on {agree:.4f} of prompts"
    )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
