"""KV prefixes that survive a restart or a roll: the hottest ones saved, restored into slots.

A prefix is hot when prompts keep reusing it (a system prompt shared by all users): the
engine counts, per slot, the claims that reused its cached prefix (Slot.reuses, Slot.shared;
see claimed()). Such a prefix is saved with llama.cpp's per-sequence state API

  - once, when it has been reused HOT_REUSES times, so that a new worker started beside this
    one (a roll) finds it; on the scheduler thread, between steps, where only the copy of the
    sequence's KV out of llama.cpp happens (hashing and writing run on a writer thread);
  - at close (a clean stop), every reused prefix, the most reused first.

A new engine of the same model file and settings restores the hottest snapshots into its
slots (the highest slot ids: place() gives unrelated prompts the lowest free id), and sets
their kv_tokens; place() and reusable() then reuse them as any cached prefix, exact outputs
and cached-token counts included. What must match is the Fingerprint (snapshot_facts());
snapshots of other fingerprints are never loaded, and a log line says which facts differ.

Files and the bound on disk: kv_snapshot_files.py. The files hold prompt tokens (a system
prompt; for a long conversation, that conversation): they are written 0600 under HERD_HOME,
which holds the database with the same texts.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from app.engine.batch_context import BatchContext
from app.engine.kv_snapshot_files import (
    DEFAULT_MAX_BYTES,
    Fingerprint,
    Snapshot,
    SnapshotFolder,
    SnapshotSkipped,
    model_digest,
    read_payload,
)
from app.engine.loader import LoadOptions
from app.engine.slots import Placement, Slot, common_prefix

logger = logging.getLogger(__name__)

# Claims reusing a prefix after which it is saved at once (not only at close): the third
# prompt sharing it makes it a shared prompt rather than one conversation's history.
HOT_REUSES = 3
# Below this many tokens a prefix is recomputed in about a decode step: not worth a file,
# and a claim sharing only a template's first tokens does not count as a reuse.
MIN_SAVE_TOKENS = 64
# A prefix is not saved (or restored) again when one on disk already holds all of it but this
# many tokens: place() copies no prefix for fewer (MIN_COPY_TOKENS) either.
NEAR_DUPLICATE_TOKENS = 32
# llama.cpp's sequence state starts with this magic (llama-context.cpp io_magic), the seq id
# and the stream count; then, per stream, a cell count and, for the one stream of the
# sequence (kv_unified off), its cells.
SEQ_STATE_MAGIC = 0xAF143CD8
SEQ_STATE_HEAD = struct.Struct("<IiI")
# Bumped when what a snapshot holds changes meaning.
FORMAT = 1


@dataclass(frozen=True)
class SnapshotConfig:
    """Where snapshots go and how much disk they may take (the whole folder)."""

    directory: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    hot_reuses: int = HOT_REUSES


def snapshot_facts(options: LoadOptions, context: BatchContext) -> dict[str, Any]:
    """Everything that changes the KV contents of a prefix, or the reuse logic around it.

    The slot count is not among them: a snapshot holds one sequence's stream and is loaded
    into any slot of any count (see _stream_record).
    """
    shape = context.shape
    return {
        "format": FORMAT,
        "model": model_digest(options.model_path),
        "llama_cpp": llama_cpp.__version__,
        "system": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "n_ctx_slot": shape.n_ctx_slot,
        # Prompts are decoded in chunks of n_batch; reusable() relies on the same cuts.
        "n_batch": shape.n_batch,
        "n_gpu_layers": options.n_gpu_layers,
        "main_gpu": options.main_gpu,
        "tensor_split": list(options.tensor_split) if options.tensor_split else None,
        "extra_buffers": str(options.extra_buffers),
        **context.kv_settings,
    }


def _stream_record(state: memoryview, seq_id: int, n_stream: int) -> memoryview:
    """The part of a sequence's state that does not depend on the slot count: the cell count
    and cells of its own stream, without the empty counts of the other streams."""
    head = SEQ_STATE_HEAD.size + 4 * seq_id
    end = len(state) - 4 * (n_stream - 1 - seq_id)
    magic, _, streams = SEQ_STATE_HEAD.unpack_from(state)
    if (
        magic != SEQ_STATE_MAGIC
        or streams != n_stream
        or end - head < 4
        or any(state[SEQ_STATE_HEAD.size : head])
        or any(state[end:])
    ):
        raise SnapshotSkipped("llama.cpp's sequence state has an unexpected layout")
    return state[head:end]


class PrefixSnapshots:
    """Saves and restores one engine's hot prefixes; off (every call a no-op) without a
    folder. Used by the thread that owns the context: the factory, then the scheduler."""

    def __init__(
        self,
        context: BatchContext | None = None,
        folder: SnapshotFolder | None = None,
        hot_reuses: int = HOT_REUSES,
    ) -> None:
        self._context = context
        self._folder = folder
        self._hot = hot_reuses
        self._restored: list[tuple[int, Snapshot]] = []
        # Prefixes on disk from this engine (restored or saved): not saved again.
        self._on_disk: list[list[int]] = []
        self._written: set[Path] = set()
        # Slots whose current prefix is on disk already.
        self._saved_slots: set[int] = set()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="herd-kv-save") if folder else None
        # Milliseconds each save held the scheduler thread (the bench reports them).
        self.save_ms: list[float] = []

    @classmethod
    def open(
        cls,
        config: SnapshotConfig | None,
        context: BatchContext,
        options: LoadOptions,
    ) -> PrefixSnapshots:
        """Snapshots for this context, or an off instance when config is None or the model
        file cannot be read for its fingerprint."""
        if config is None:
            return cls()
        try:
            fingerprint = Fingerprint.of(snapshot_facts(options, context))
        except OSError as exc:
            logger.warning("KV prefix snapshots off: cannot fingerprint the model: %s", exc)
            return cls()
        folder = SnapshotFolder(config.directory, fingerprint, config.max_bytes)
        return cls(context, folder, config.hot_reuses)

    @property
    def enabled(self) -> bool:
        return self._folder is not None

    @property
    def folder(self) -> Path | None:
        return None if self._folder is None else self._folder.dir

    def restore(self) -> int:
        """Load the hottest snapshots of this fingerprint into the highest slots (one each);
        returns the tokens restored. Never raises for a bad file: it is logged and skipped."""
        if self._folder is None or self._context is None:
            return 0
        started = time.perf_counter()
        found = self._folder.snapshots()
        if not found:
            self._folder.explain_others()
            return 0
        found.sort(key=lambda s: (s.reuses, s.mtime), reverse=True)
        shape = self._context.shape
        seq_id = shape.slots - 1
        for snapshot in found:
            if seq_id < 0:
                break
            if len(snapshot.tokens) >= shape.n_ctx_slot or self._covered(snapshot.tokens):
                continue
            try:
                self._load(seq_id, read_payload(snapshot))
            except SnapshotSkipped as exc:
                logger.warning("KV snapshot %s skipped: %s", snapshot.path.name, exc)
                continue
            except Exception:  # never fail a worker's start over a cache file
                logger.exception("KV snapshot %s skipped", snapshot.path.name)
                self._context.forget(seq_id)
                continue
            self._restored.append((seq_id, snapshot))
            self._on_disk.append(snapshot.tokens)
            seq_id -= 1
        tokens = sum(len(s.tokens) for _, s in self._restored)
        logger.info(
            "restored %d KV prefix snapshot(s), %d tokens, in %.0f ms from %s",
            len(self._restored),
            tokens,
            (time.perf_counter() - started) * 1000,
            self._folder.dir,
        )
        return tokens

    def adopt(self, slots: list[Slot]) -> None:
        """Give the restored slots their tokens: from now on place() sees them as cached."""
        for seq_id, snapshot in self._restored:
            slot = slots[seq_id]
            slot.kv_tokens = list(snapshot.tokens)
            slot.reuses = snapshot.reuses
            slot.shared = len(snapshot.tokens)
            self._saved_slots.add(seq_id)

    def moved(self, source: Slot, target: Slot) -> None:
        """A running sequence's cells were copied from source to target (slot_layout.py):
        target now holds source's prefix, with its counts."""
        target.reuses, target.shared = source.reuses, source.shared
        if source.seq_id in self._saved_slots:
            self._saved_slots.add(target.seq_id)
        else:
            self._saved_slots.discard(target.seq_id)

    def claimed(self, slot: Slot, placement: Placement) -> None:
        """Count a claim of slot (its KV already cut to placement.reused); saves the prefix
        when this claim makes it hot."""
        reused, donor = placement.reused, placement.copy_from
        if reused < MIN_SAVE_TOKENS:
            slot.reuses, slot.shared = 0, 0
            self._saved_slots.discard(slot.seq_id)
            return
        if donor is not None:
            slot.reuses = donor.reuses + 1
            if donor.seq_id in self._saved_slots:
                self._saved_slots.add(slot.seq_id)
            else:
                self._saved_slots.discard(slot.seq_id)
        else:
            slot.reuses += 1
        slot.shared = reused
        hot = slot.reuses >= self._hot and slot.seq_id not in self._saved_slots
        if hot and self._folder is not None:
            self._saved_slots.add(slot.seq_id)
            try:
                self._save(slot, reused)
            except Exception:  # an optimisation never fails the request or the scheduler
                logger.exception("saving the KV prefix of slot %d failed", slot.seq_id)
                if self._context is not None:
                    self._context.forget(slot.seq_id, reused)

    def close(self, slots: list[Slot]) -> None:
        """At engine close (the scheduler has stopped): save every reused prefix, the most
        reused first, then wait for the writes."""
        if self._writer is None:
            return
        try:
            reused = [s for s in slots if s.reuses > 0 and s.shared >= MIN_SAVE_TOKENS]
            for slot in sorted(reused, key=lambda s: s.reuses, reverse=True):
                prefix = slot.kv_tokens[: slot.shared]
                if len(prefix) < slot.shared or self._covered(prefix):
                    continue
                assert self._context is not None
                # The tails (one request's question and answer) are not the shared prefix.
                self._context.forget(slot.seq_id, slot.shared)
                del slot.kv_tokens[slot.shared :]
                self._save(slot, slot.shared)
        except Exception:  # a snapshot is an optimisation: never fail a stop over it
            logger.exception("saving KV prefix snapshots failed")
        finally:
            self._writer.shutdown(wait=True)

    def _covered(self, tokens: list[int]) -> bool:
        return any(
            common_prefix(saved, tokens) >= len(tokens) - NEAR_DUPLICATE_TOKENS
            for saved in self._on_disk
        )

    def _save(self, slot: Slot, n_tokens: int) -> None:
        """Copy slot's first n_tokens cells out of llama.cpp (its KV holds exactly those) and
        hand them to the writer thread."""
        assert self._context is not None and self._writer is not None
        tokens = slot.kv_tokens[:n_tokens]
        if self._covered(tokens):
            return
        started = time.perf_counter()
        try:
            self._apply_copies(slot.seq_id, n_tokens)
            record = self._state(slot.seq_id)
        except SnapshotSkipped as exc:
            logger.warning("KV prefix of slot %d not saved: %s", slot.seq_id, exc)
            return
        self.save_ms.append((time.perf_counter() - started) * 1000)
        self._on_disk.append(tokens)
        self._writer.submit(self._write, tokens, slot.reuses, record)

    def _apply_copies(self, seq_id: int, n_tokens: int) -> None:
        """Make llama.cpp carry out pending cross-stream copies: a prefix copied into a slot
        (place(), slot compaction) reaches its cells at the start of the next decode, and the
        state API reads the cells as they are. One throwaway token after seq_id's prefix is
        decoded and dropped; cheaper than tracking every copy, and saves are rare."""
        assert self._context is not None
        batch = self._context.batch
        batch.clear()
        batch.add(0, n_tokens, seq_id, True)
        code = self._context.decode()
        batch.clear()
        self._context.forget(seq_id, n_tokens)
        if code != 0:
            raise SnapshotSkipped(f"llama_decode returned {code}")

    def _state(self, seq_id: int) -> memoryview:
        assert self._context is not None
        ctx = self._context.ctx
        size = int(llama_cpp.llama_state_seq_get_size(ctx, seq_id))
        buffer = bytearray(size)
        array = (ctypes.c_uint8 * size).from_buffer(buffer)
        written = int(llama_cpp.llama_state_seq_get_data(ctx, array, size, seq_id))
        del array  # releases the export, so the buffer may be sliced and freed
        if written == 0 or written > size:
            raise SnapshotSkipped("llama.cpp could not copy the sequence's state")
        state = memoryview(buffer)[:written]
        return _stream_record(state, seq_id, self._context.shape.slots)

    def _write(self, tokens: list[int], reuses: int, record: memoryview) -> None:
        """On the writer thread: the file, within the bound (errors are logged, not raised)."""
        assert self._folder is not None
        try:
            path = self._folder.write(tokens, reuses, record, keep=self._written)
        except (OSError, SnapshotSkipped) as exc:
            logger.warning("KV prefix snapshot of %d tokens not written: %s", len(tokens), exc)
            return
        self._written.add(path)
        logger.info("KV prefix snapshot saved: %d tokens, %s", len(tokens), path)

    def _load(self, seq_id: int, record: bytes) -> None:
        """Put a stream record into seq_id as llama.cpp's sequence state for this context."""
        assert self._context is not None
        n_stream = self._context.shape.slots
        head = SEQ_STATE_HEAD.size
        buffer = bytearray(head + len(record) + 4 * (n_stream - 1))
        SEQ_STATE_HEAD.pack_into(buffer, 0, SEQ_STATE_MAGIC, seq_id, n_stream)
        buffer[head : head + len(record)] = record
        array = (ctypes.c_uint8 * len(buffer)).from_buffer(buffer)
        ctx = self._context.ctx
        read = int(llama_cpp.llama_state_seq_set_data(ctx, array, len(buffer), seq_id))
        if read != len(buffer):
            self._context.forget(seq_id)
            raise SnapshotSkipped(f"llama.cpp refused its state (read {read} of {len(buffer)})")
