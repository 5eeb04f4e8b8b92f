"""Validate a GGUF file and read what operators need from its header.

Nothing here hands a file to llama.cpp: a file is checked with bounded reads first (magic,
version, counts against the file size, then a walk of the metadata section checking every
length and array count against the bytes left), then parsed with the `gguf` package, then
every tensor's data range is checked against the file's end.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
HEADER_BYTES = 24  # magic, version, tensor count, key/value count
# Smallest possible records: a tensor info (name length, n_dims, type, offset) and a
# key/value pair (key length, value type, a one-byte value).
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8
MIN_KV_BYTES = 8 + 4 + 1
MAX_TENSORS = 1_000_000
MAX_KV = 1_000_000
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")
# GGUF metadata value types: fixed sizes of the scalars, and the two variable-size ones.
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_ARRAY_DEPTH = 4


class InvalidGGUF(ValueError):
    """The file is not a GGUF that Herd will hand to llama.cpp; the message says why."""


@dataclass(frozen=True)
class ModelLayout:
    """What the memory estimate needs: bytes per repeating layer, the rest, the KV shape."""

    layer_bytes: list[int]
    input_bytes: int
    output_bytes: int
    # Bytes of the token embeddings when they double as the output layer (no output.weight).
    tied_output_bytes: int
    n_embd: int
    n_head: int
    n_head_kv: int
    key_length: int
    value_length: int
    n_vocab: int
    n_ff: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelLayout:
        return cls(**data)


@dataclass(frozen=True)
class GGUFInfo:
    """A valid GGUF's header, summarised."""

    version: int
    architecture: str
    parameter_count: int
    file_type: str | None
    quantization: str | None
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    has_chat_template: bool
    tensor_count: int
    tensor_bytes: int
    layout: ModelLayout
    metadata: dict[str, Any] = field(default_factory=dict)
    # The chat template renders a `tools` list (tool calling through the model's own syntax).
    chat_template_tools: bool = False


def _unpack_header(head: bytes) -> tuple[str, int, int, int]:
    """(struct byte order, version, tensor count, key/value count) of a 24-byte header."""
    version, tensor_count, kv_count = struct.unpack("<IQQ", head[4:HEADER_BYTES])
    if version & 0xFFFF == 0:  # written on a big-endian machine
        return (">", *struct.unpack(">IQQ", head[4:HEADER_BYTES]))
    return "<", version, tensor_count, kv_count


class _Cursor:
    """Bounded reads through the metadata section: nothing may run past the file's end."""

    def __init__(self, data: mmap.mmap, order: str) -> None:
        self.data = data
        self.order = order
        self.at = HEADER_BYTES

    def take(self, n: int, what: str) -> int:
        if n > len(self.data) - self.at:
            raise InvalidGGUF(
                f"truncated or corrupt: {what} at byte {self.at} runs past the end of the file"
            )
        start, self.at = self.at, self.at + n
        return start

    def number(self, fmt: str, what: str) -> int:
        start = self.take(struct.calcsize(fmt), what)
        value: int = struct.unpack_from(self.order + fmt, self.data, start)[0]
        return value

    def left(self) -> int:
        return len(self.data) - self.at


def _skip_value(cursor: _Cursor, value_type: int, depth: int = 0) -> None:
    if value_type in _SCALAR_BYTES:
        cursor.take(_SCALAR_BYTES[value_type], "a metadata value")
    elif value_type == _STRING:
        cursor.take(cursor.number("Q", "a string length"), "a metadata string")
    elif value_type == _ARRAY:
        if depth >= _MAX_ARRAY_DEPTH:
            raise InvalidGGUF(f"corrupt: metadata arrays nested deeper than {_MAX_ARRAY_DEPTH}")
        item_type = cursor.number("I", "an array's item type")
        count = cursor.number("Q", "an array's length")
        if item_type in _SCALAR_BYTES:
            cursor.take(count * _SCALAR_BYTES[item_type], f"an array of {count} items")
            return
        # Each string item needs at least its 8-byte length, each nested array 12 bytes:
        # a count beyond that cannot be real, and is refused before any loop over it.
        smallest = 8 if item_type == _STRING else 12
        if item_type not in (_STRING, _ARRAY) or count * smallest > cursor.left():
            raise InvalidGGUF(
                f"truncated or corrupt: an array of {count} items of type {item_type} "
                f"at byte {cursor.at} cannot fit in the file"
            )
        for _ in range(count):
            _skip_value(cursor, item_type, depth + 1)
    else:
        raise InvalidGGUF(f"corrupt: unknown metadata value type {value_type}")


def check_metadata(path: Path) -> None:
    """Walk every metadata key and value with bounded reads.

    The `gguf` package trusts array lengths: one whose items lie past the end of the file
    makes it loop (and allocate) without end, so lengths are checked here first."""
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            order, _, _, kv_count = _unpack_header(data[:HEADER_BYTES])
            cursor = _Cursor(data, order)
            for _ in range(kv_count):
                cursor.take(cursor.number("Q", "a key length"), "a metadata key")
                _skip_value(cursor, cursor.number("I", "a value type"))
    except (OSError, ValueError) as exc:
        if isinstance(exc, InvalidGGUF):
            raise
        raise InvalidGGUF(f"unreadable: {exc}") from exc


def check_header(path: Path) -> tuple[int, int, int]:
    """Bounded checks of the fixed header; returns (version, tensor_count, kv_count)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(HEADER_BYTES)
    except OSError as exc:
        raise InvalidGGUF(f"unreadable: {exc.strerror or exc}") from exc
    if len(head) < 4 or head[:4] != GGUF_MAGIC:
        raise InvalidGGUF(f"not a GGUF file: wrong magic {head[:4]!r} (expected b'GGUF')")
    if len(head) < HEADER_BYTES:
        raise InvalidGGUF(f"truncated: {size} bytes is shorter than the GGUF header")
    _, version, tensor_count, kv_count = _unpack_header(head)
    if version not in SUPPORTED_VERSIONS:
        raise InvalidGGUF(f"unsupported GGUF version {version} (supported: 2, 3)")
    room = size - HEADER_BYTES
    if tensor_count > MAX_TENSORS or tensor_count * MIN_TENSOR_INFO_BYTES > room:
        raise InvalidGGUF(
            f"truncated or corrupt: {tensor_count} tensors cannot fit in {size} bytes"
        )
    if kv_count > MAX_KV or kv_count * MIN_KV_BYTES > room:
        raise InvalidGGUF(
            f"truncated or corrupt: {kv_count} metadata keys cannot fit in {size} bytes"
        )
    return version, tensor_count, kv_count


def _field(reader: Any, key: str) -> Any:
    item = reader.fields.get(key)
    if item is None:
        return None
    try:
        value = item.contents()
    except UnicodeDecodeError as exc:
        # GGUF strings are UTF-8; llama.cpp would read garbage (or fail) on such a file.
        raise InvalidGGUF(f"metadata {key} is not valid UTF-8") from exc
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _int_field(reader: Any, key: str) -> int | None:
    value = _field(reader, key)
    if isinstance(value, list):  # per-layer arrays (e.g. head counts): take the largest
        value = max(value) if value else None
    return int(value) if isinstance(value, (int, float)) else None


def read_gguf(path: Path) -> GGUFInfo:
    """Validate path and summarise its header; raises InvalidGGUF with the reason."""
    version, tensor_count, _ = check_header(path)
    check_metadata(path)
    reader = _parsed(path, tensor_count)
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidGGUF("missing general.architecture")

    def arch_int(suffix: str) -> int | None:
        return _int_field(reader, f"{arch}.{suffix}")

    sums = _sum_tensors(reader)
    block_count = arch_int("block_count")
    return GGUFInfo(
        version=version,
        architecture=arch,
        parameter_count=sum(int(t.n_elements) for t in reader.tensors),
        file_type=_file_type(reader),
        quantization=sums.by_type.most_common(1)[0][0] if sums.by_type else None,
        context_length=arch_int("context_length"),
        block_count=block_count,
        embedding_length=arch_int("embedding_length"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        has_chat_template=reader.fields.get("tokenizer.chat_template") is not None,
        tensor_count=tensor_count,
        tensor_bytes=sum(int(t.n_bytes) for t in reader.tensors),
        layout=_layout(reader, arch, sums),
        metadata={"name": _field(reader, "general.name")},
        chat_template_tools="tools" in str(_field(reader, "tokenizer.chat_template") or ""),
    )


def _parsed(path: Path, tensor_count: int) -> Any:
    """The gguf package's reader of a file whose header and metadata were checked, once
    every tensor the header counts is listed and its data lies within the file."""
    # Imported here: the gguf package (numpy) is only needed when a file is read.
    import gguf

    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, struct.error, OSError) as exc:
        raise InvalidGGUF(f"truncated or corrupt GGUF: {exc}") from exc
    except MemoryError as exc:
        raise InvalidGGUF("GGUF header declares more data than can be read") from exc

    if len(reader.tensors) != tensor_count:
        raise InvalidGGUF(f"tensor table lists {len(reader.tensors)} of {tensor_count} tensors")
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise InvalidGGUF(
                f"truncated: tensor {tensor.name!r} ends at byte {end} beyond the file's "
                f"{size} bytes"
            )
    return reader


def _file_type(reader: Any) -> str | None:
    """general.file_type by llama.cpp's name for it (Q4_K_M, ...), or None when unset."""
    import gguf

    file_type_id = _int_field(reader, "general.file_type")
    if file_type_id is None:
        return None
    try:
        return str(gguf.LlamaFileType(file_type_id).name.removeprefix("MOSTLY_"))
    except ValueError:
        return f"unknown ({file_type_id})"


@dataclass
class _TensorSums:
    """Tensor bytes summed by where they sit in the model and by quantization type."""

    by_type: Counter[str] = field(default_factory=Counter)
    by_layer: dict[int, int] = field(default_factory=dict)
    input_bytes: int = 0
    output_bytes: int = 0
    has_output: bool = False
    token_embd_bytes: int = 0


def _sum_tensors(reader: Any) -> _TensorSums:
    sums = _TensorSums()
    for tensor in reader.tensors:
        n_bytes = int(tensor.n_bytes)
        if len(tensor.shape) >= 2:
            sums.by_type[tensor.tensor_type.name] += n_bytes
        match = _LAYER_TENSOR.match(tensor.name)
        if match:
            index = int(match.group(1))
            sums.by_layer[index] = sums.by_layer.get(index, 0) + n_bytes
        elif tensor.name.startswith("output"):
            sums.output_bytes += n_bytes
            sums.has_output = sums.has_output or tensor.name == "output.weight"
        else:
            sums.input_bytes += n_bytes
            if tensor.name == "token_embd.weight":
                sums.token_embd_bytes = n_bytes
    return sums


def _layout(reader: Any, arch: str, sums: _TensorSums) -> ModelLayout:
    """What memory estimates need: bytes per layer and the shapes behind the KV cache."""

    def arch_int(suffix: str) -> int | None:
        return _int_field(reader, f"{arch}.{suffix}")

    block_count = arch_int("block_count")
    n_layers = block_count if block_count is not None else len(sums.by_layer)
    n_embd = arch_int("embedding_length") or 0
    n_head = arch_int("attention.head_count") or 0
    n_head_kv = arch_int("attention.head_count_kv") or n_head
    head_dim = n_embd // n_head if n_head else 0
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_vocab = arch_int("vocab_size") or (len(tokens.data) if tokens is not None else 0)
    return ModelLayout(
        layer_bytes=[sums.by_layer.get(i, 0) for i in range(n_layers)],
        input_bytes=sums.input_bytes,
        output_bytes=sums.output_bytes,
        # Without output.weight, llama.cpp reuses the token embeddings as the output layer.
        tied_output_bytes=0 if sums.has_output else sums.token_embd_bytes,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=arch_int("attention.key_length") or head_dim,
        value_length=arch_int("attention.value_length") or head_dim,
        n_vocab=n_vocab,
        n_ff=arch_int("feed_forward_length") or 0,
    )
