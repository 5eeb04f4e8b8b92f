"""Whether llama.cpp may put weights in its extra CPU buffer types (repacked layouts, and
AMX tiles on CPUs that have them).

llama.cpp's AMX matmul (ggml_backend_amx_mul_mat) crashes the process with SIGSEGV on the
first prompt of more than one token in some virtual machines that report AMX (seen in
Firecracker guests: the kernel grants the tile state, the matmul still faults). `auto`
therefore leaves the extra buffer types off on a CPU that reports AMX under a hypervisor,
and on everywhere else; `on` / `off` decide it outright (Settings.cpu_extra_buffers,
HERD_CPU_EXTRA_BUFFERS). Off costs the repacked layouts' speed, not correctness.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

import llama_cpp

CPUINFO = Path("/proc/cpuinfo")


class ExtraBuffers(StrEnum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The first CPU's flags as /proc/cpuinfo lists them (empty where there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def extra_buffers_allowed(choice: ExtraBuffers, flags: set[str] | None = None) -> bool:
    """Whether loads may use the extra buffer types under choice on this CPU."""
    if choice is not ExtraBuffers.AUTO:
        return choice is ExtraBuffers.ON
    flags = cpu_flags() if flags is None else flags
    return not ("amx_tile" in flags and "hypervisor" in flags)


@contextmanager
def model_params(allowed: bool) -> Iterator[None]:
    """Loads inside this block use the extra buffer types only if allowed.

    llama-cpp-python's Llama takes no argument for it: it starts from
    llama_model_default_params(), so that function answers with the flag set for the
    duration of the load."""
    if allowed:
        yield
        return
    module: Any = llama_cpp.llama_cpp
    original = module.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        module.llama_model_default_params = original


def new_llama(extra_buffers: ExtraBuffers = ExtraBuffers.AUTO, **kwargs: Any) -> Any:
    """llama_cpp.Llama(**kwargs), loaded with the extra buffer types as extra_buffers says:
    the one way Herd (and its tests and benchmarks) construct a Llama."""
    with model_params(extra_buffers_allowed(extra_buffers)):
        return llama_cpp.Llama(**kwargs)
