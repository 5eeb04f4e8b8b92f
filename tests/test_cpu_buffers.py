"""llama.cpp's extra CPU buffer types: left off where its AMX matmul crashes (a CPU that
reports AMX under a hypervisor), on elsewhere, and as set when set; a real load with them
off answers."""

from __future__ import annotations

from pathlib import Path

import llama_cpp

from app.engine.cpu_buffers import ExtraBuffers, cpu_flags, extra_buffers_allowed, model_params
from app.engine.loader import LoadOptions, load_model
from app.store.demo import find_demo_model


def test_auto_is_off_only_for_amx_under_a_hypervisor() -> None:
    auto = ExtraBuffers.AUTO
    assert extra_buffers_allowed(auto, {"avx2", "amx_tile", "hypervisor"}) is False
    assert extra_buffers_allowed(auto, {"avx2", "amx_tile"}) is True
    assert extra_buffers_allowed(auto, {"avx2", "hypervisor"}) is True
    assert extra_buffers_allowed(ExtraBuffers.ON, {"amx_tile", "hypervisor"}) is True
    assert extra_buffers_allowed(ExtraBuffers.OFF, set()) is False


def test_cpu_flags_reads_the_first_cpu(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_tile hypervisor\n\nflags : x\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_tile", "hypervisor"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_model_params_sets_the_flag_only_inside_the_block() -> None:
    with model_params(False):
        assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is False
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True
    with model_params(True):
        assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True


def test_a_load_without_extra_buffers_answers() -> None:
    loaded = load_model(
        LoadOptions(find_demo_model().path, n_ctx=256, extra_buffers=ExtraBuffers.OFF)
    )
    try:
        out = loaded.llama.create_completion("The capital of France is", max_tokens=4)
        assert out["choices"][0]["text"]
    finally:
        loaded.close()
