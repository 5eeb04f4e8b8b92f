"""Hypothesis fuzzing of the GGUF validator: hostile mutations of a valid tiny GGUF (byte
flips, truncations, huge counts and string lengths, tensor offsets beyond the file) are
rejected with InvalidGGUF only, quickly and without large allocations; valid files read."""

from __future__ import annotations

import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.store.gguf_file import InvalidGGUF, read_gguf
from tests.conftest import write_tiny_gguf

# Per file: the validator answers within this (a guard against hangs and blow-ups, not a
# speed target: one flipped byte took 5.2 s once on 2 cores under the full suite; the
# whole file of 300 examples takes 3 s alone), and allocates no more than this.
MAX_SECONDS = 15.0
MAX_ALLOCATED_BYTES = 64 * 1024 * 1024
HUGE = [2**32, 2**40, 2**62, 2**63 - 1, 2**64 - 1, 0, 1]


def _positions(path: Path) -> tuple[list[int], list[int]]:
    """Byte offsets of the u64 fields in the header (key and string lengths, array
    counts, tensor dims) and of each tensor's data offset."""
    reader = gguf.GGUFReader(path)
    lengths: list[int] = [8, 16]  # tensor count, key/value count
    offsets: list[int] = []
    for field in [*reader.fields.values(), *(t.field for t in reader.tensors)]:
        at = field.offset
        for i, part in enumerate(field.parts):
            if part.dtype.itemsize == 8 and part.dtype.kind == "u":
                for j in range(part.size):
                    lengths.append(at + 8 * j)
                    is_tensor_offset = field.name in {t.name for t in reader.tensors}
                    if is_tensor_offset and i == len(field.parts) - 1:
                        offsets.append(at)
            at += part.nbytes
    return lengths, offsets


class Sample(tuple[bytes, list[int], list[int]]):
    """A valid GGUF's bytes with its length and tensor-offset positions; short repr."""

    def __repr__(self) -> str:
        return f"Sample({len(self[0])} bytes)"


@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    lengths, offsets = _positions(path)
    assert offsets and len(lengths) > 20  # the positions really were found
    return Sample((path.read_bytes(), lengths, offsets))


def _check(data: bytes) -> None:
    """read_gguf on data: a summary or InvalidGGUF, in time and in bounded memory."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.gguf"
        path.write_bytes(data)
        tracemalloc.start()
        started = time.monotonic()
        try:
            read_gguf(path)
        except InvalidGGUF:
            pass
        finally:
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"took {elapsed:.1f} s"
    assert peak < MAX_ALLOCATED_BYTES, f"allocated {peak} bytes"


flips = st.lists(st.tuples(st.integers(0, 4095), st.integers(1, 255)), min_size=1, max_size=8)
mutation = st.one_of(
    st.tuples(st.just("flip"), flips),
    st.tuples(st.just("truncate"), st.integers(0, 1_000_000)),
    st.tuples(st.just("huge_length"), st.integers(0, 10_000), st.sampled_from(HUGE)),
    st.tuples(st.just("tensor_offset"), st.integers(0, 10_000), st.integers(0, 2**64 - 1)),
)


def _mutate(data: bytes, lengths: list[int], offsets: list[int], change: tuple) -> bytes:  # type: ignore[type-arg]
    out = bytearray(data)
    kind = change[0]
    if not out:
        return data
    if kind == "flip":
        for at, xor in change[1]:
            out[at % len(out)] ^= xor
    elif kind == "truncate":
        del out[change[1] % len(out) :]
    elif kind == "huge_length":
        at = lengths[change[1] % len(lengths)]
        out[at : at + 8] = struct.pack("<Q", change[2])
    else:
        at = offsets[change[1] % len(offsets)]
        out[at : at + 8] = struct.pack("<Q", change[2])
    return bytes(out)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_gguf_is_rejected_cleanly(
    valid_gguf: Sample,
    changes: list[tuple],  # type: ignore[type-arg]
) -> None:
    data, lengths, offsets = valid_gguf
    for change in changes:
        data = _mutate(data, lengths, offsets, change)
    _check(data)


@settings(max_examples=100, deadline=None, database=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_after_the_magic(tail: bytes) -> None:
    _check(b"GGUF" + tail)


def test_tensor_offset_beyond_the_file_is_named(
    valid_gguf: Sample,
) -> None:
    data, _, offsets = valid_gguf
    bad = _mutate(data, [], offsets, ("tensor_offset", 0, len(data) * 2))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "far.gguf"
        path.write_bytes(bad)
        with pytest.raises(InvalidGGUF, match=r"beyond the file|truncated or corrupt"):
            read_gguf(path)


def test_valid_file_still_reads(valid_gguf: Sample) -> None:
    data, _, _ = valid_gguf
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ok.gguf"
        path.write_bytes(data)
        info = read_gguf(path)
    assert info.architecture == "llama"
    assert info.tensor_count > 0
