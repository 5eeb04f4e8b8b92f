"""Free memory on this host: RAM from psutil, a GPU's from nvidia-smi. Used to size defaults
(parallel slots) before a model is loaded, never to refuse one."""

from __future__ import annotations

import shutil
import subprocess

import psutil

NVIDIA_SMI_TIMEOUT_S = 2.0


def free_ram_bytes() -> int:
    return int(psutil.virtual_memory().available)


def free_vram_bytes(gpu: int) -> int | None:
    """Free memory of NVIDIA GPU `gpu`; None where nvidia-smi is missing or cannot tell."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-i", str(gpu), "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out) * 1024 * 1024 if out.isdigit() else None


def free_bytes_for(n_gpu_layers: int, main_gpu: int = 0) -> int | None:
    """Free memory where a model's layers would go: the main GPU's when any are offloaded."""
    return free_vram_bytes(main_gpu) if n_gpu_layers != 0 else free_ram_bytes()
