"""Keeping busy slots next to each other, so one decode is one pass over the weights.

With kv_unified off (batch_context.py), llama.cpp splits a batch into micro-batches of equal
tokens per sequence AND of consecutive sequence ids (llama_batch_allocr::split_equal with
`sequential`): slots {0, 1, 2} decode their next tokens in one pass over the weights, slots
{0, 1, 3} in two. On a CPU a decode step is bound by reading the weights, so a gap in the busy
slots costs about one more step's time on every step while it lasts. Under Poisson arrivals
gaps open all the time: a stream in the middle ends and the slots either side run on.

Two rules keep the busy slots in one run:
- a new prompt goes to a free slot that adds no run (placement in slots.py asks runs_with);
- when a gap opens and nothing waits to fill it, the last busy sequence moves into it
  (compaction below): llama.cpp copies its KV stream once (a memcpy of one slot's cells,
  a few ms here), which the saved passes repay within a few steps.
Copies are bit-exact, so a move never changes a sequence's output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# A sequence this close to its end is not worth a stream copy: the gap closes on its own.
MIN_STEPS_LEFT_TO_MOVE = 4


def runs(ids: Iterable[int]) -> int:
    """How many maximal runs of consecutive ids there are (micro-batches per decode)."""
    ordered = sorted(set(ids))
    return sum(1 for i, s in enumerate(ordered) if i == 0 or s != ordered[i - 1] + 1)


def runs_with(busy: Iterable[int], seq_id: int) -> int:
    """Runs of the busy ids once seq_id is busy too."""
    return runs([*busy, seq_id])


@dataclass(frozen=True)
class Move:
    """Move the sequence in slot source into the free slot target."""

    source: int
    target: int


def compaction(busy: set[int], movable: set[int], n_slots: int) -> Move | None:
    """The one move that joins the busy ids into fewer runs, or None.

    Moves the highest movable busy id into the lowest free id below it, provided that
    lowers the number of runs; one move per step keeps each step's copy cost small.
    """
    if runs(busy) <= 1:
        return None
    free = [s for s in range(n_slots) if s not in busy]
    for source in sorted(movable, reverse=True):
        for target in free:
            if target >= source:
                break
            after = (busy - {source}) | {target}
            if runs(after) < runs(busy):
                return Move(source, target)
    return None
