"""Files of saved KV prefixes (prefix_snapshots.py): their format, their folder, the bound.

Layout: <HERD_HOME>/kv_snapshots/<fingerprint>/<prefix digest>.kv, one file per prefix, and
fingerprint.json describing what the fingerprint covers (read only to say why a snapshot of
other settings is refused). A file is

    MAGIC, u32 header length, header (JSON), n_tokens int32 tokens, payload

where the header names the fingerprint, the token count, the reuse count when it was saved,
the payload's length and the sha256 of tokens + payload. Anything that does not check out
(short, other fingerprint, other digest) is skipped with a reason and never given to
llama.cpp: its state loader trusts the bytes it reads.

Files are written to a temporary name and renamed, so a reader (a new worker during a roll)
never sees half a file; the folder holds at most max_bytes, least recently used files go
first (restoring a file counts as a use).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MAGIC = b"HERDKV01"
SUFFIX = ".kv"
DESCRIPTION = "fingerprint.json"
# A header is a few hundred bytes; anything longer is not one of ours.
MAX_HEADER_BYTES = 64 * 1024
# The default bound on the folder, all fingerprints together. A 1k-token prefix costs
# 23 MiB of f16 KV with the 135M demo model and 128 MiB with an 8B Llama: 1 GiB keeps a few
# system prompts of a large model (a worker restores at most one per slot) and costs a
# fraction of what the model file itself takes on the same disk.
DEFAULT_MAX_BYTES = 1 << 30
# How much of the model file the fingerprint reads: the GGUF header and metadata are in the
# first block, then evenly spaced samples of the weights and the end of the file. Hashing a
# 40 GB file at every start would add most of a minute to a roll; see model_digest().
HEAD_BYTES = 16 << 20
SAMPLES = 64
SAMPLE_BYTES = 256 << 10
TAIL_BYTES = 1 << 20
# A temporary file this old was left by a worker killed while writing (a write takes seconds).
STALE_TMP_S = 3600.0


class SnapshotSkipped(Exception):
    """A snapshot file that is not restored; the message says why."""


@dataclass(frozen=True)
class Fingerprint:
    """What a KV snapshot depends on: digest names the folder, facts say what went into it."""

    digest: str
    facts: dict[str, Any]

    @classmethod
    def of(cls, facts: dict[str, Any]) -> Fingerprint:
        text = json.dumps(facts, sort_keys=True, separators=(",", ":"))
        return cls(hashlib.sha256(text.encode()).hexdigest()[:24], facts)


def model_digest(path: Path) -> str:
    """size:sha256 of the model file, read whole when small, else of its header and samples.

    Path-independent (a copy of the file matches). Files past HEAD_BYTES + SAMPLES blocks
    are sampled: any re-quantization or fine-tune changes the metadata or nearly every
    sampled block; an edit of a few small tensors between samples would go unseen.
    """
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= HEAD_BYTES + SAMPLES * SAMPLE_BYTES + TAIL_BYTES:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
        else:
            digest.update(f.read(HEAD_BYTES))
            span = size - HEAD_BYTES - TAIL_BYTES - SAMPLE_BYTES
            for i in range(SAMPLES):
                f.seek(HEAD_BYTES + span * i // (SAMPLES - 1))
                digest.update(f.read(SAMPLE_BYTES))
            f.seek(size - TAIL_BYTES)
            digest.update(f.read(TAIL_BYTES))
    return f"{size}:{digest.hexdigest()}"


def token_digest(tokens: list[int]) -> str:
    """The file name of a prefix: the same prefix saved twice overwrites itself."""
    return hashlib.sha256(_token_bytes(tokens)).hexdigest()[:32]


def _token_bytes(tokens: list[int]) -> bytes:
    return struct.pack(f"<{len(tokens)}i", *tokens)


@dataclass
class Snapshot:
    """One file's header and tokens; payload is read only when it is restored."""

    path: Path
    tokens: list[int]
    reuses: int
    payload_bytes: int
    sha256: str
    payload_at: int
    mtime: float


def encode(
    fingerprint: str, tokens: list[int], reuses: int, payload: bytes | memoryview
) -> list[bytes | memoryview]:
    """The parts of a snapshot file, in order (written one after another, never joined)."""
    token_bytes = _token_bytes(tokens)
    digest = hashlib.sha256(token_bytes)
    digest.update(payload)
    header = json.dumps(
        {
            "fingerprint": fingerprint,
            "n_tokens": len(tokens),
            "reuses": reuses,
            "payload_bytes": len(payload),
            "sha256": digest.hexdigest(),
            "saved_at": time.time(),
        }
    ).encode()
    return [MAGIC, struct.pack("<I", len(header)), header, token_bytes, payload]


def read_header(path: Path, fingerprint: str) -> Snapshot:
    """Header and tokens of a snapshot file; SnapshotSkipped when it is not usable here."""
    try:
        with path.open("rb") as f:
            stat = os.fstat(f.fileno())
            lead = f.read(len(MAGIC) + 4)
            if len(lead) < len(MAGIC) + 4 or lead[: len(MAGIC)] != MAGIC:
                raise SnapshotSkipped("not a Herd KV snapshot (or truncated)")
            (header_len,) = struct.unpack("<I", lead[len(MAGIC) :])
            if header_len > MAX_HEADER_BYTES:
                raise SnapshotSkipped("its header is corrupt")
            header = json.loads(f.read(header_len))
            if header.get("fingerprint") != fingerprint:
                raise SnapshotSkipped("it was saved for another model file or settings")
            n = int(header["n_tokens"])
            raw = f.read(4 * n)
            payload_at = f.tell()
    except OSError as exc:
        raise SnapshotSkipped(f"unreadable: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotSkipped(f"its header is corrupt ({exc})") from exc
    payload_bytes = int(header["payload_bytes"])
    if len(raw) != 4 * n or stat.st_size != payload_at + payload_bytes:
        expected = len(MAGIC) + 4 + header_len + 4 * n + payload_bytes
        raise SnapshotSkipped(f"truncated or padded ({stat.st_size} bytes, {expected} expected)")
    return Snapshot(
        path=path,
        tokens=list(struct.unpack(f"<{n}i", raw)),
        reuses=int(header.get("reuses", 0)),
        payload_bytes=payload_bytes,
        sha256=str(header["sha256"]),
        payload_at=payload_at,
        mtime=stat.st_mtime,
    )


def read_payload(snapshot: Snapshot) -> bytes:
    """The llama.cpp state of a snapshot, checked against its digest."""
    try:
        with snapshot.path.open("rb") as f:
            f.seek(snapshot.payload_at)
            payload = f.read(snapshot.payload_bytes)
    except OSError as exc:
        raise SnapshotSkipped(f"unreadable: {exc}") from exc
    digest = hashlib.sha256(_token_bytes(snapshot.tokens))
    digest.update(payload)
    if len(payload) != snapshot.payload_bytes or digest.hexdigest() != snapshot.sha256:
        raise SnapshotSkipped("its contents do not match their checksum (corrupt)")
    # Restored counts as used: eviction keeps what new workers keep restoring.
    os.utime(snapshot.path)
    return payload


class SnapshotFolder:
    """The kv_snapshots folder of one fingerprint, and the bound on the whole folder."""

    def __init__(self, root: Path, fingerprint: Fingerprint, max_bytes: int) -> None:
        self.root = root
        self.fingerprint = fingerprint
        self.max_bytes = max_bytes
        self.dir = root / fingerprint.digest

    def snapshots(self) -> list[Snapshot]:
        """This fingerprint's usable snapshots; unusable ones are logged and skipped."""
        found = []
        for path in self._files([self.dir]):
            try:
                found.append(read_header(path, self.fingerprint.digest))
            except SnapshotSkipped as exc:
                logger.warning("KV snapshot %s skipped: %s", path.name, exc)
        return found

    def explain_others(self) -> None:
        """Log, for each other fingerprint that has snapshots, which facts differ."""
        try:
            others = [p for p in self.root.iterdir() if p.is_dir() and p != self.dir]
        except OSError:
            return
        for other in others:
            if not any(self._files([other])):
                continue
            try:
                facts = json.loads((other / DESCRIPTION).read_text())
            except (OSError, ValueError):
                facts = {}
            mine = self.fingerprint.facts
            differ = [
                f"{key} {facts.get(key)!r} (here {mine.get(key)!r})"
                for key in sorted(set(mine) | set(facts))
                if facts.get(key) != mine.get(key)
            ]
            logger.info(
                "KV snapshots in %s not restored: saved with other settings: %s",
                other,
                "; ".join(differ) or "unknown (no readable fingerprint.json)",
            )

    def write(
        self, tokens: list[int], reuses: int, payload: bytes | memoryview, keep: Iterable[Path]
    ) -> Path:
        """Write one snapshot (atomically), evicting least recently used files to stay
        within max_bytes; never evicts keep. Raises OSError, or SnapshotSkipped if it cannot
        fit."""
        parts = encode(self.fingerprint.digest, tokens, reuses, payload)
        size = sum(map(len, parts))
        target = self.dir / (token_digest(tokens) + SUFFIX)
        self._make_room(size, target, set(keep))
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        description = self.dir / DESCRIPTION
        if not description.exists():
            self._replace(description, [json.dumps(self.fingerprint.facts, indent=1).encode()])
        self._replace(target, parts)
        return target

    def _make_room(self, size: int, target: Path, keep: set[Path]) -> None:
        if size > self.max_bytes:
            raise SnapshotSkipped(f"{size} bytes exceed the bound of {self.max_bytes}")
        files = []
        for path in self._files(self._dirs(), suffix=".tmp"):
            try:
                if path.stat().st_mtime < time.time() - STALE_TMP_S:
                    path.unlink()
            except OSError:
                continue
        for path in self._files(self._dirs()):
            try:
                stat = path.stat()
            except OSError:
                continue  # evicted by another worker meanwhile
            if path != target:  # replaced by the new file, not added to it
                files.append((stat.st_mtime, stat.st_size, path))
        total = size + sum(file_size for _, file_size, _ in files)
        for _, file_size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path in keep:
                continue
            path.unlink(missing_ok=True)
            total -= file_size
            logger.info("KV snapshot %s evicted (bound %d bytes)", path, self.max_bytes)
        if total > self.max_bytes:
            raise SnapshotSkipped(f"no room within the bound of {self.max_bytes} bytes")

    def _dirs(self) -> list[Path]:
        try:
            return [p for p in self.root.iterdir() if p.is_dir()]
        except OSError:
            return []

    @staticmethod
    def _files(dirs: list[Path], suffix: str = SUFFIX) -> list[Path]:
        files: list[Path] = []
        for d in dirs:
            try:
                files += [p for p in d.iterdir() if p.suffix == suffix]
            except OSError:
                continue
        return files

    @staticmethod
    def _replace(target: Path, parts: list[bytes | memoryview]) -> None:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                for part in parts:
                    f.write(part)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
