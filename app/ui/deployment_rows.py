"""Deployments and workers as table rows for the Deployments page (no Streamlit here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.control.deployments import DeploymentView
from app.control.replicas import WorkerView
from app.store.estimate import format_bytes
from app.ui.worker_health import PrefixReuse

CPU_ONLY_REBUILD = (
    'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
)


def format_duration(seconds: float | None) -> str:
    """12 s, 4 min, 3 h 5 min, 2 d 4 h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def gpu_layers_label(n_gpu_layers: int) -> str:
    return "all" if n_gpu_layers == -1 else str(n_gpu_layers)


def deployment_rows(deployments: list[DeploymentView]) -> list[dict[str, Any]]:
    return [
        {
            "id": d.id,
            "alias": d.alias,
            "model": d.model_name,
            "state": d.state,
            "ready": f"{d.ready_replicas} / {d.replicas}",
            "GPU layers": gpu_layers_label(d.serving.n_gpu_layers),
            "n_ctx": d.serving.n_ctx,
            "parallel": d.serving.parallel,
            "threads": d.serving.threads or "auto",
            "serves": f"embeddings ({d.serving.pooling})" if d.serving.embeddings else "chat",
            "generation": d.generation,
            "failures": d.failures,
            "runs on": d.placement,
            "last error": d.error,
        }
        for d in deployments
    ]


def prefix_reuse_label(reuse: PrefixReuse | None) -> str:
    """Share of prompt tokens served from the prefix cache, as "62 % of 1,480 tokens"."""
    if reuse is None:
        return "-"
    rate = reuse.hit_rate
    if rate is None:
        return "no prompts yet"
    return f"{rate * 100:.0f} % of {reuse.prompt_tokens:,} tokens"


def worker_rows(
    workers: list[WorkerView], reuse: Mapping[str, PrefixReuse] | None = None
) -> list[dict[str, Any]]:
    """One row per worker; reuse maps a worker URL to what its /health reported."""
    reuse = reuse or {}
    return [
        {
            "deployment": w.deployment_id,
            "state": w.state,
            "pid": w.pid,
            "url": w.url,
            "uptime": format_duration(w.uptime_s),
            "slots busy": None if w.slots_busy is None else f"{w.slots_busy} / {w.slots_total}",
            "queue": w.queue_length,
            "prefix cache hits": prefix_reuse_label(reuse.get(w.url) if w.url else None),
            "tokens/s": None if w.tokens_per_second is None else round(w.tokens_per_second, 1),
            "RSS": format_bytes(w.rss_bytes),
            "VRAM": format_bytes(w.vram_bytes),
            "GPU layers": w.n_gpu_layers_offloaded,
            "heartbeat": format_duration(w.heartbeat_age_s) + " ago"
            if w.heartbeat_age_s is not None
            else "-",
            "generation": w.generation,
            "last error": w.error,
        }
        for w in workers
    ]


def cpu_only_workers(deployments: list[DeploymentView]) -> list[WorkerView]:
    """Workers whose llama-cpp-python build cannot offload although GPU layers were asked."""
    return [
        w
        for d in deployments
        if d.serving.n_gpu_layers != 0
        for w in d.workers
        if w.gpu_offload_supported is False
    ]


def worker_label(worker: WorkerView) -> str:
    """How a worker is named in the log picker."""
    return f"deployment {worker.deployment_id} · pid {worker.pid} · {worker.state}"
