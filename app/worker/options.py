"""How a worker was asked to run: the `herd worker` flags, as one value."""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.pooling import Pooling
from app.worker.advertise import check_advertise_url

DEFAULT_N_CTX = 4096
DEFAULT_MAX_QUEUE = 16


@dataclass(frozen=True)
class WorkerOptions:
    """One worker's settings; model is a path to a .gguf or a name in the model store."""

    model: str
    host: str = "127.0.0.1"
    port: int = 0
    n_gpu_layers: int = 0
    main_gpu: int = 0
    tensor_split: tuple[float, ...] | None = None
    # 0: the model's trained context. Larger than that is capped to it.
    n_ctx: int = DEFAULT_N_CTX
    # 0: as many slots as memory allows, up to DEFAULT_SLOTS (store/estimate.py).
    parallel: int = 0
    threads: int | None = None
    alias: str | None = None
    deployment_id: int | None = None
    max_queue: int = DEFAULT_MAX_QUEUE
    log_path: str | None = None
    # The URL other hosts reach this worker at (http://host[:port]); None: from --host.
    advertise_url: str | None = None
    # Join (or create as 'external') the deployment for (alias, model): replicas started by
    # Kubernetes or an operator rather than by a supervisor.
    join: bool = False
    # Serve POST /v1/embeddings (only) instead of completions, pooling token vectors so.
    embeddings: bool = False
    pooling: Pooling = "model"

    def __post_init__(self) -> None:
        problems = []
        if not self.model:
            problems.append("--model is empty")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port {self.port} is not a port number")
        if self.n_gpu_layers < -1:
            problems.append("--n-gpu-layers is -1 (all) or a count >= 0")
        if self.main_gpu < 0:
            problems.append("--main-gpu is a device index >= 0")
        if self.n_ctx < 0:
            problems.append("--n-ctx is >= 0 (0: the model's trained context)")
        if self.parallel < 0:
            problems.append("--parallel is >= 1 (or 0: chosen from memory)")
        if self.threads is not None and self.threads < 1:
            problems.append("--threads is >= 1")
        if self.max_queue < 0:
            problems.append("--max-queue is >= 0")
        if self.alias is not None and not self.alias.strip():
            problems.append("--alias is empty")
        if self.join and self.deployment_id is not None:
            problems.append("--join and --deployment-id exclude each other")
        if self.advertise_url is not None:
            try:
                check_advertise_url(self.advertise_url)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))


def parse_tensor_split(text: str) -> tuple[float, ...]:
    """'3,1' -> (3.0, 1.0): the share of the model each GPU gets, as llama.cpp takes it."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"tensor split {text!r} is not comma-separated numbers") from None
    if any(p < 0 for p in parts) or not any(p > 0 for p in parts):
        raise ValueError(f"tensor split {text!r} needs shares >= 0, at least one above 0")
    return parts
