"""Free memory on this host: RAM from psutil, a GPU's from nvidia-smi. Used to size defaults
(parallel slots) before a model is loaded, never to refuse one."""

from __future__ import annotations

import shutil
import subprocess

import psutil

NVIDIA_SMI_TIMEOUT_S = 2.0


def free_ram_bytes() -> int:
    return int(psutil.virtual_memory().available)


def nvidia_smi(*args: str) -> str | None:
    """What `nvidia-smi ARGS` prints; None where it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        return subprocess.run(
            [exe, *args],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def free_vram_bytes(gpu: int) -> int | None:
    """Free memory of NVIDIA GPU `gpu`; None where nvidia-smi is missing or cannot tell."""
    out = (
        nvidia_smi("-i", str(gpu), "--query-gpu=memory.free", "--format=csv,noheader,nounits")
        or ""
    ).strip()
    return int(out) * 1024 * 1024 if out.isdigit() else None


def free_bytes_for(n_gpu_layers: int, main_gpu: int = 0) -> int | None:
    """Free memory where a model's layers would go: the main GPU's when any are offloaded."""
    return free_vram_bytes(main_gpu) if n_gpu_layers != 0 else free_ram_bytes()
