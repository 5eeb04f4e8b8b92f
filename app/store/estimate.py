"""Estimate the VRAM and RAM a GGUF model needs for a chosen n_gpu_layers and n_ctx.

The model follows how llama.cpp places a model:
- weights: llama.cpp offloads the *last* n_gpu_layers repeating layers; the output layer
  (output norm and output matrix) is offloaded only when n_gpu_layers exceeds the layer
  count (or is -1, "all"); the token embeddings always stay in RAM. A tied output layer
  (no output.weight) is the token embedding matrix, copied to the GPU when offloaded.
- KV cache: per layer, n_ctx x n_head_kv x (key_length + value_length) f16 values, on the
  device of its layer.
- compute buffer: the graph scratch for one micro-batch of n_ubatch tokens, whose peak is
  the largest of the logits (n_vocab), the attention scores (n_head x n_ctx) and the feed
  forward activations (2 x n_ff), each with an n_embd-wide residual, in f32. It sits on the
  GPU when any layer is offloaded, else in RAM.
The CUDA runtime's own context (a few hundred MiB per GPU) is not part of the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.store.gguf_file import ModelLayout

KV_BYTES_PER_VALUE = 2  # f16, llama.cpp's default cache type
F32_BYTES = 4
DEFAULT_UBATCH = 512
# Slots a deployment gets by default where memory allows: continuous batching serves several
# streams at nearly the cost of one (bench/RESULTS.md, engine section).
DEFAULT_SLOTS = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model is expected to take on the GPU and in RAM."""

    gpu_layers: int
    output_offloaded: bool
    vram_weights: int
    ram_weights: int
    vram_kv: int
    ram_kv: int
    compute: int

    @property
    def vram_bytes(self) -> int:
        return self.vram_weights + self.vram_kv + (self.compute if self.gpu_layers else 0)

    @property
    def ram_bytes(self) -> int:
        return self.ram_weights + self.ram_kv + (0 if self.gpu_layers else self.compute)


def kv_bytes_per_layer(layout: ModelLayout, n_ctx: int) -> int:
    """KV cache bytes one layer holds for n_ctx tokens."""
    return n_ctx * layout.n_head_kv * (layout.key_length + layout.value_length) * KV_BYTES_PER_VALUE


def compute_buffer_bytes(layout: ModelLayout, n_ctx: int, n_ubatch: int = DEFAULT_UBATCH) -> int:
    """Scratch bytes for evaluating one micro-batch (see the module docstring)."""
    tokens = min(n_ubatch, n_ctx)
    widest = max(layout.n_vocab, layout.n_head * n_ctx, 2 * layout.n_ff)
    return tokens * (widest + layout.n_embd) * F32_BYTES


def estimate_memory(
    layout: ModelLayout, n_gpu_layers: int, n_ctx: int, slots: int = 1
) -> MemoryEstimate:
    """VRAM and RAM for n_gpu_layers (-1 = all) and `slots` parallel sequences of n_ctx
    tokens each (the batched engine gives every slot its own n_ctx cells of KV cache)."""
    if n_ctx <= 0:
        raise ValueError(f"n_ctx must be positive, got {n_ctx}")
    if slots < 1:
        raise ValueError(f"slots must be 1 or more, got {slots}")
    if n_gpu_layers < -1:
        raise ValueError(f"n_gpu_layers must be -1 (all) or >= 0, got {n_gpu_layers}")
    n_layers = len(layout.layer_bytes)
    everything = n_gpu_layers == -1 or n_gpu_layers > n_layers
    gpu_layers = n_layers if everything else n_gpu_layers
    first_gpu_layer = n_layers - gpu_layers

    vram_weights = sum(layout.layer_bytes[first_gpu_layer:])
    ram_weights = sum(layout.layer_bytes[:first_gpu_layer]) + layout.input_bytes
    # A tied output layer left on the CPU reads the embedding matrix already counted in
    # input_bytes; offloaded, a copy goes to the GPU while the embeddings stay in RAM.
    if everything:
        vram_weights += layout.output_bytes + layout.tied_output_bytes
    else:
        ram_weights += layout.output_bytes

    per_layer_kv = kv_bytes_per_layer(layout, n_ctx * slots)
    return MemoryEstimate(
        gpu_layers=gpu_layers,
        output_offloaded=everything,
        vram_weights=vram_weights,
        ram_weights=ram_weights,
        vram_kv=per_layer_kv * gpu_layers,
        ram_kv=per_layer_kv * first_gpu_layer,
        compute=compute_buffer_bytes(layout, n_ctx),
    )


def default_slots(
    layout: ModelLayout, n_gpu_layers: int, n_ctx: int, budget_bytes: int | None
) -> int:
    """Parallel slots to offer by default: DEFAULT_SLOTS, so that continuous batching is on,
    unless the KV caches of that many slots would not fit in budget_bytes (the free memory
    of the device the layers go to; None when unknown), then the most that do, at least 1."""
    for slots in range(DEFAULT_SLOTS, 1, -1):
        estimate = estimate_memory(layout, n_gpu_layers, n_ctx, slots)
        needed = estimate.vram_bytes if estimate.gpu_layers else estimate.ram_bytes
        if budget_bytes is None or needed <= budget_bytes:
            return slots
    return 1


def format_bytes(n: int | float | None) -> str:
    """Human-readable size in binary units."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
