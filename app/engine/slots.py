"""Slots of the batched engine and the choice of slot for a new prompt (prefix reuse)."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.engine.slot_layout import runs_with

# A cross-slot copy moves a whole KV stream; below this many shared tokens recomputing wins.
MIN_COPY_TOKENS = 32
# llama.cpp's CPU flash attention uses a tiled kernel for chunks of at least this many
# queries and a row-by-row one below it; they round differently (GGML_FA_TILE_Q).
ATTENTION_TILE_ROWS = 64


@dataclass
class Slot:
    """One sequence of the context; kv_tokens are the tokens its KV cells hold, in order."""

    seq_id: int
    kv_tokens: list[int] = field(default_factory=list)
    busy: bool = False
    # Claims in a row that reused this slot's cached prefix, and how many tokens the last one
    # reused: the hottest prefixes are saved to disk (prefix_snapshots.py).
    reuses: int = 0
    shared: int = 0


@dataclass(frozen=True)
class Placement:
    """Where a prompt goes: slot, tokens reused, and the slot to copy them from (if other)."""

    slot: Slot
    reused: int
    copy_from: Slot | None = None


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reusable(shared: int, prompt_len: int, chunk: int) -> int:
    """How much of a shared prefix to reuse so the rest decodes exactly as a cold run would.

    Prompts are prefilled in chunks ending at multiples of chunk. A cold run decodes the
    chunk holding position `shared` whole; if that chunk is long enough for the tiled
    attention kernel, the resumed part must be too, so reuse stops that many rows earlier.
    At least the last prompt token is decoded: its logits give the first completion token.
    """
    reuse = min(shared, prompt_len - 1)
    start = reuse // chunk * chunk
    end = min(prompt_len, start + chunk)
    if end - start >= ATTENTION_TILE_ROWS and end - reuse < ATTENTION_TILE_ROWS:
        reuse = end - ATTENTION_TILE_ROWS
    return reuse


def place(prompt: list[int], slots: list[Slot], chunk: int) -> Placement | None:
    """Pick a free slot for prompt, reusing the longest cached prefix; None if all are busy.

    A longer prefix held by another slot (busy or not) is copied over.
    """
    free = [s for s in slots if not s.busy]
    if not free:
        return None
    # Only free slots that keep the busy ones in as few runs as possible (slot_layout.py):
    # a prefix cached elsewhere is copied over rather than decoding in a second run.
    busy = [s.seq_id for s in slots if s.busy]
    fewest = min(runs_with(busy, s.seq_id) for s in free)
    free = [s for s in free if runs_with(busy, s.seq_id) == fewest]
    n = len(prompt)
    shared = {s.seq_id: reusable(common_prefix(s.kv_tokens, prompt), n, chunk) for s in slots}
    # Ties go to the lowest id: busy slots packed together decode in fewer micro-batches.
    own = max(free, key=lambda s: (shared[s.seq_id], -s.seq_id))
    donor = max(slots, key=lambda s: shared[s.seq_id])
    gain = shared[donor.seq_id] - shared[own.seq_id]
    if donor is not own and gain >= MIN_COPY_TOKENS:
        # Overwrite the free slot whose cache is worth least: shortest match, then lowest id.
        target = min(free, key=lambda s: (shared[s.seq_id], s.seq_id))
        return Placement(target, shared[donor.seq_id], copy_from=donor)
    return Placement(own, shared[own.seq_id])
