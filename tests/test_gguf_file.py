"""Validation and header reading of GGUF files: valid, truncated, hostile, not GGUF at all."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from app.store.demo import find_demo_model
from app.store.gguf_file import InvalidGGUF, read_gguf
from tests.conftest import TINY


def test_reads_tiny_model_header(tiny_gguf: Callable[..., Path]) -> None:
    info = read_gguf(tiny_gguf())
    assert info.architecture == "llama"
    assert info.block_count == TINY["n_layer"]
    assert info.context_length == TINY["n_ctx_train"]
    assert info.embedding_length == TINY["n_embd"]
    assert info.head_count == TINY["n_head"]
    assert info.head_count_kv == TINY["n_head_kv"]
    assert info.file_type == "ALL_F32"
    assert info.quantization == "F32"
    assert info.has_chat_template is True
    e, ff, v = TINY["n_embd"], TINY["n_ff"], TINY["n_vocab"]
    kv = e // TINY["n_head"] * TINY["n_head_kv"]
    per_layer = 2 * e + 2 * e * e + 2 * kv * e + 3 * ff * e
    assert info.parameter_count == TINY["n_layer"] * per_layer + 2 * v * e + e
    assert info.layout.layer_bytes == [per_layer * 4] * TINY["n_layer"]


def test_chat_template_absence_is_reported(tiny_gguf: Callable[..., Path]) -> None:
    assert read_gguf(tiny_gguf(chat_template=False)).has_chat_template is False


def test_demo_model_header() -> None:
    info = read_gguf(find_demo_model().path)
    assert info.architecture == "llama"
    assert info.file_type == "Q4_1"
    assert info.block_count == 30
    assert info.parameter_count == 134_515_008
    assert info.layout.tied_output_bytes > 0  # SmolLM2 ties its output to the embeddings


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("hello, I am a text file pretending to be a model\n" * 10)
    with pytest.raises(InvalidGGUF, match="wrong magic"):
        read_gguf(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(InvalidGGUF, match="wrong magic"):
        read_gguf(path)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidGGUF, match="unreadable"):
        read_gguf(tmp_path / "missing.gguf")


@pytest.mark.parametrize("keep", [10, 100, 1000, -16])
def test_truncated(tiny_gguf: Callable[..., Path], tmp_path: Path, keep: int) -> None:
    data = tiny_gguf().read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:keep])
    with pytest.raises(InvalidGGUF) as info:
        read_gguf(path)
    assert any(word in str(info.value) for word in ("truncated", "corrupt"))


def test_absurd_counts(tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    data = bytearray(tiny_gguf().read_bytes())
    huge_tensors = data[:8] + struct.pack("<Q", 2**62) + data[16:]
    (tmp_path / "tensors.gguf").write_bytes(huge_tensors)
    with pytest.raises(InvalidGGUF, match="tensors cannot fit"):
        read_gguf(tmp_path / "tensors.gguf")
    huge_kv = data[:16] + struct.pack("<Q", 2**40) + data[24:]
    (tmp_path / "kv.gguf").write_bytes(huge_kv)
    with pytest.raises(InvalidGGUF, match="metadata keys cannot fit"):
        read_gguf(tmp_path / "kv.gguf")


def test_unsupported_version(tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    data = bytearray(tiny_gguf().read_bytes())
    data[4:8] = struct.pack("<I", 99)
    (tmp_path / "v99.gguf").write_bytes(data)
    with pytest.raises(InvalidGGUF, match="unsupported GGUF version 99"):
        read_gguf(tmp_path / "v99.gguf")


def test_huge_string_length(tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    data = bytearray(tiny_gguf().read_bytes())
    # The first key's length field follows the 24-byte header.
    data[24:32] = struct.pack("<Q", 2**60)
    (tmp_path / "string.gguf").write_bytes(data)
    with pytest.raises(InvalidGGUF):
        read_gguf(tmp_path / "string.gguf")


def test_tensor_offset_beyond_file(tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    import gguf

    source = tiny_gguf()
    reader = gguf.GGUFReader(source)
    last = reader.tensors[-1]
    offset_field = last.field.parts[-1]  # the tensor's data offset (uint64)
    position = last.field.offset + sum(part.nbytes for part in last.field.parts[:-1])
    data = bytearray(source.read_bytes())
    assert struct.unpack("<Q", data[position : position + 8])[0] == int(offset_field[0])
    data[position : position + 8] = struct.pack("<Q", len(data) * 4)
    (tmp_path / "offset.gguf").write_bytes(data)
    with pytest.raises(InvalidGGUF):
        read_gguf(tmp_path / "offset.gguf")


def test_metadata_string_that_is_not_utf8(tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    # Found by the fuzz test: general.name with an invalid UTF-8 byte.
    data = bytearray(tiny_gguf().read_bytes())
    position = data.index(b"tiny-test")
    data[position] = 0xF4
    (tmp_path / "name.gguf").write_bytes(data)
    with pytest.raises(InvalidGGUF, match=r"general\.name is not valid UTF-8"):
        read_gguf(tmp_path / "name.gguf")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("count", [2**20, 2**40, 2**64 - 1])
def test_numeric_array_longer_than_the_file(
    tiny_gguf: Callable[..., Path], tmp_path: Path, count: int
) -> None:
    # gguf's reader walks such an array item by item past the end of the file, forever and
    # allocating as it goes (found by the fuzz test): the walk of the metadata refuses it.
    data = bytearray(tiny_gguf().read_bytes())
    key = b"tokenizer.ggml.token_type"
    at = data.index(key) + len(key) + 4 + 4  # past the key, the value type, the item type
    assert struct.unpack_from("<Q", data, at)[0] == TINY["n_vocab"]  # really the count
    data[at : at + 8] = struct.pack("<Q", count)
    bad = tmp_path / "long-array.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(InvalidGGUF, match=f"array of {count} items"):
        read_gguf(bad)
