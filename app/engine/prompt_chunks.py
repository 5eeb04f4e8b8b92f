"""Where the batched engine cuts prompt chunks, and which chunks may share one decode.

Chunk boundaries decide how llama.cpp's CPU attention rounds, so they are chosen for
reproducible numbers first (a greedy run gives the same text however it was scheduled).
"""

from __future__ import annotations

from app.engine.batch_job import Running, seq_of
from app.engine.slots import ATTENTION_TILE_ROWS

# Packed prompt chunks end at most here: a KV view of 512+ cells lets llama.cpp pick its
# split-KV attention kernel for a one-token piece, which rounds unlike the whole chunk.
# llama.cpp pads the view to 256 cells, so 256 keeps every packed view under 512.
PACK_MAX_POS = 256


def chunk_end(r: Running, step: int, at_most: int | None = None) -> int:
    """Where r's next prompt chunk ends; at most at_most tokens on where that is exact.

    Chunks end at multiples of the step size (n_batch), counted from the prompt's start, so
    a prompt resumed after a reused prefix is cut where a cold run cuts it: llama.cpp's CPU
    attention rounds differently for short and long chunks (see slots.py).
    """
    n_prompt = len(r.job.prepared.tokens)
    if r.prefilled < n_prompt:
        end = min(n_prompt, (r.prefilled // step + 1) * step)
    # Generated tokens replayed after a preemption were decoded one per step. Pieces of
    # fewer than ATTENTION_TILE_ROWS rows within PACK_MAX_POS compute like one-token
    # decodes (see packable), so a greedy run resumes exactly; beyond, whole steps are
    # faster and round only as llama.cpp's own cache reuse does.
    elif r.prefilled < PACK_MAX_POS:
        end = min(r.prefilled + ATTENTION_TILE_ROWS - 1, PACK_MAX_POS)
    else:
        end = (r.prefilled // step + 1) * step
    end = min(len(r.tokens), end)
    # A chunk that computes like one-token decodes may be cut anywhere, for the same reason.
    if at_most is not None and end - r.prefilled < ATTENTION_TILE_ROWS and end <= PACK_MAX_POS:
        end = min(end, r.prefilled + at_most)
    return end


def packable(r: Running, step: int) -> bool:
    """Whether r's next chunk decodes the same packed with other prompts as alone.

    Packed, llama.cpp splits the chunks into micro-batches of equal tokens per sequence,
    so a chunk may reach the kernels in pieces. Pieces compute the same as the whole when
    the whole is short enough for the row-by-row attention kernel anyway, and its KV
    view is too short for the single-query split-KV kernel (PACK_MAX_POS).
    """
    end = chunk_end(r, step)
    return r.pack and end - r.prefilled < ATTENTION_TILE_ROWS and end <= PACK_MAX_POS


def pack(
    prefilling: list[Running], room: int, step: int, at_most: int | None = None
) -> list[Running]:
    """The prompts whose next chunks (see chunk_end for at_most) go into one decode:
    packable ones, in slot order, as many as room (tokens) holds."""
    packed: list[Running] = []
    room = min(room, step)
    for r in sorted((r for r in prefilling if packable(r, step)), key=seq_of):
        size = chunk_end(r, step, at_most) - r.prefilled
        if 0 < size <= room:  # at_most 0 (no room left) would cut a chunk to nothing
            packed.append(r)
            room -= size
    return packed


def step_chunks(
    live: list[Running], batch: list[Running], room: int, batch_room: int, step: int
) -> tuple[list[tuple[Running, int]], int]:
    """The prompt chunks that share a step's one decode with the running streams' next tokens:
    packable ones (see packable), live prompts' within room (tokens), then batch prompts'
    within batch_room, each cut to its room where exact (a packable chunk always is); returns
    them with their ends, and what is left of batch_room."""
    chunks = [(r, chunk_end(r, step, room)) for r in pack(live, room, step, room)]
    room -= sum(end - r.prefilled for r, end in chunks)
    batch_room = cut = min(batch_room, room)
    for r in pack(batch, batch_room, step, cut):
        end = chunk_end(r, step, cut)
        chunks.append((r, end))
        batch_room -= end - r.prefilled
    return chunks, batch_room
