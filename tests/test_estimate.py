"""Memory estimate against numbers computed by hand for the tiny test model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.store.estimate import DEFAULT_SLOTS, default_slots, estimate_memory, format_bytes
from app.store.gguf_file import read_gguf

# The tiny model (tests/conftest.py TINY), all f32: n_layer 2, n_embd 64, n_head 4,
# n_head_kv 2 (head size 16, so K and V are 32 wide), n_ff 128, n_vocab 96.
LAYER = 4 * (2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64)  # 147,968 bytes
EMBED = 4 * 96 * 64  # token_embd: 24,576 bytes
OUTPUT = 4 * 64 + 4 * 96 * 64  # output_norm + output.weight: 24,832 bytes
N_CTX = 256
KV_PER_LAYER = N_CTX * 2 * (16 + 16) * 2  # n_ctx x n_head_kv x (k + v) x f16 = 32,768
# 256 tokens (min(512, n_ctx)) x (widest of vocab 96, heads x ctx 1024, 2 x ff 256 + n_embd 64)
COMPUTE = 256 * (1024 + 64) * 4  # 1,114,112


def test_hand_computed_numbers(tiny_gguf: Callable[..., Path]) -> None:
    layout = read_gguf(tiny_gguf()).layout
    assert LAYER == 147_968
    assert layout.layer_bytes == [LAYER, LAYER]
    assert layout.input_bytes == EMBED
    assert layout.output_bytes == OUTPUT

    cpu = estimate_memory(layout, 0, N_CTX)
    assert cpu.vram_bytes == 0
    assert cpu.ram_bytes == 2 * LAYER + EMBED + OUTPUT + 2 * KV_PER_LAYER + COMPUTE

    half = estimate_memory(layout, 1, N_CTX)
    assert half.gpu_layers == 1
    assert half.vram_bytes == LAYER + KV_PER_LAYER + COMPUTE
    assert half.ram_bytes == LAYER + EMBED + OUTPUT + KV_PER_LAYER

    every_layer = estimate_memory(layout, 2, N_CTX)  # all repeating layers, output on CPU
    assert every_layer.output_offloaded is False
    assert every_layer.vram_bytes == 2 * LAYER + 2 * KV_PER_LAYER + COMPUTE
    assert every_layer.ram_bytes == EMBED + OUTPUT

    full = estimate_memory(layout, -1, N_CTX)
    assert full.output_offloaded is True
    assert full.vram_bytes == 2 * LAYER + OUTPUT + 2 * KV_PER_LAYER + COMPUTE
    assert full.ram_bytes == EMBED
    assert estimate_memory(layout, 99, N_CTX) == full


def test_tied_output_is_copied_to_the_gpu(tiny_gguf: Callable[..., Path]) -> None:
    layout = read_gguf(tiny_gguf(tied_output=True)).layout
    assert layout.output_bytes == 4 * 64  # just output_norm
    assert layout.tied_output_bytes == EMBED
    full = estimate_memory(layout, -1, N_CTX)
    assert full.vram_weights == 2 * LAYER + 4 * 64 + EMBED
    assert full.ram_weights == EMBED
    cpu = estimate_memory(layout, 0, N_CTX)
    assert cpu.ram_weights == 2 * LAYER + EMBED + 4 * 64


def test_kv_grows_with_context(tiny_gguf: Callable[..., Path]) -> None:
    layout = read_gguf(tiny_gguf()).layout
    small = estimate_memory(layout, 0, 256)
    large = estimate_memory(layout, 0, 512)
    assert large.ram_kv == 2 * small.ram_kv


def test_rejects_nonsense(tiny_gguf: Callable[..., Path]) -> None:
    layout = read_gguf(tiny_gguf()).layout
    with pytest.raises(ValueError, match="n_ctx"):
        estimate_memory(layout, 0, 0)
    with pytest.raises(ValueError, match="n_gpu_layers"):
        estimate_memory(layout, -2, 256)


def test_format_bytes() -> None:
    assert format_bytes(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"


def test_default_slots_fit_the_free_memory(tiny_gguf: Callable[..., Path]) -> None:
    layout = read_gguf(tiny_gguf()).layout
    need = {n: estimate_memory(layout, 0, N_CTX, n).ram_bytes for n in (1, 2, 3, 4)}
    assert need[1] < need[2] < need[3] < need[4]  # each slot holds its own KV cache
    assert default_slots(layout, 0, N_CTX, None) == DEFAULT_SLOTS == 4  # memory unknown
    assert default_slots(layout, 0, N_CTX, need[4]) == 4
    assert default_slots(layout, 0, N_CTX, need[4] - 1) == 3
    assert default_slots(layout, 0, N_CTX, need[2]) == 2
    assert default_slots(layout, 0, N_CTX, 0) == 1  # never fewer than one
