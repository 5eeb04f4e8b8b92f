"""Memory on this host: free RAM from psutil; a GPU's free memory and a process's GPU memory
from nvidia-smi. Free memory sizes defaults (parallel slots) before a model is loaded."""

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


def free_vram_bytes(gpu: int) -> int | None:
    """Free memory of NVIDIA GPU `gpu`; None where nvidia-smi is missing or cannot tell."""
    out = (
        nvidia_smi("-i", str(gpu), "--query-gpu=memory.free", "--format=csv,noheader,nounits") or ""
    ).strip()
    return int(out) * 1024 * 1024 if out.isdigit() else None


def free_bytes_for(n_gpu_layers: int, main_gpu: int = 0) -> int | None:
    """Free memory where a model's layers would go: the main GPU's when any are offloaded."""
    return free_vram_bytes(main_gpu) if n_gpu_layers != 0 else free_ram_bytes()
