"""Memory a worker uses: RSS from psutil, VRAM from nvidia-smi when layers are offloaded."""

from __future__ import annotations

import os
import time

import psutil

from app.common.host_memory import gpu_bytes_of

# nvidia-smi takes tens of milliseconds; VRAM changes slowly once the model is loaded.
VRAM_REFRESH_S = 10.0


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


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
