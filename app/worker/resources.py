"""Memory a worker uses: RSS from psutil, VRAM from nvidia-smi when layers are offloaded."""

from __future__ import annotations

import os
import time

import psutil

from app.host_memory import nvidia_smi

# nvidia-smi takes tens of milliseconds; VRAM changes slowly once the model is loaded.
VRAM_REFRESH_S = 10.0


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def gpu_bytes_of(pid: int) -> int | None:
    """GPU memory held by pid across NVIDIA GPUs; None where nvidia-smi cannot tell."""
    out = nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    if out is None:
        return None
    total_mib = 0
    found = False
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            total_mib += int(fields[1])
            found = True
    return total_mib * 1024 * 1024 if found else None


class VramProbe:
    """This process's VRAM, re-measured at most every VRAM_REFRESH_S; None on CPU."""

    def __init__(self) -> None:
        self._value: int | None = None
        self._measured_at = -VRAM_REFRESH_S

    def read(self, offloaded_layers: int) -> int | None:
        if offloaded_layers <= 0:
            return None
        now = time.monotonic()
        if now - self._measured_at >= VRAM_REFRESH_S:
            self._value = gpu_bytes_of(os.getpid())
            self._measured_at = now
        return self._value
