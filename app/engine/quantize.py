"""llama.cpp's quantizer (llama_model_quantize) through llama-cpp-python's low-level API."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import llama_cpp

from app.engine.llama_log import LlamaLog


class QuantizeError(RuntimeError):
    """llama.cpp refused or failed to quantize; the message is its own reason."""


def llama_ftypes() -> dict[str, int]:
    """Every output file type this llama-cpp-python build names: {"Q4_K_M": 15, ...}."""
    types: dict[str, int] = {}
    for attr in dir(llama_cpp):
        if not attr.startswith("LLAMA_FTYPE_") or attr == "LLAMA_FTYPE_GUESSED":
            continue
        name = attr.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
        types[name] = int(getattr(llama_cpp, attr))
    return dict(sorted(types.items(), key=lambda item: item[1]))


def llama_cpp_version() -> str:
    """The llama-cpp-python version (which pins the vendored llama.cpp)."""
    return f"llama-cpp-python {llama_cpp.__version__}"


def quantize_file(
    source: Path,
    output: Path,
    ftype: int,
    *,
    allow_requantize: bool = False,
    prune_layers: tuple[int, ...] = (),
    nthread: int = 0,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Quantize source into output (ftype, as in llama_ftypes()); on_line gets llama.cpp's
    log lines, among them "[  12/ 272] blk.1.attn_q.weight ..." as each tensor starts."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = allow_requantize
    params.nthread = nthread
    # llama.cpp reads the layer list up to a -1 terminator; the array must outlive the call.
    prune = (ctypes.c_int32 * (len(prune_layers) + 1))(*sorted(prune_layers), -1)
    if prune_layers:
        params.prune_layers = ctypes.cast(prune, ctypes.POINTER(ctypes.c_int32))
    log = LlamaLog(listener=on_line)
    log.install()
    try:
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(output).encode(), ctypes.byref(params)
        )
    finally:
        log.restore()
    if status != 0:
        reasons = [line for line in log.errors() if line.strip("= ")]
        raise QuantizeError("; ".join(reasons) or f"llama_model_quantize returned {status}")
